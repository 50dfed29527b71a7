#include "image.h"

#include <png.h>

#include <cmath>
#include <csetjmp>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <memory>
#include <sys/stat.h>
#include <unistd.h>

#include "error.h"

namespace gligen {

// ------------------------------------------------------------------------------------------------
// PNG

namespace {
struct PngRead {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngRead() { png_destroy_read_struct(&png, &info, nullptr); }
};

void png_error_fn(png_structp png, png_const_charp msg) {
  auto* buf = static_cast<std::string*>(png_get_error_ptr(png));
  if (buf) *buf = msg;
  png_longjmp(png, 1);
}
void png_warning_fn(png_structp, png_const_charp) {}

uint8_t rgb2l(const uint8_t* p) {
  // Pillow Convert.c: L24(rgb) = r*19595 + g*38470 + b*7471 + 0x8000, then >> 16.
  return static_cast<uint8_t>((p[0] * 19595u + p[1] * 38470u + p[2] * 7471u + 0x8000u) >> 16);
}
}  // namespace

Image8 read_png(const std::string& path, int channels, const std::string& what) {
  std::unique_ptr<FILE, int (*)(FILE*)> fp(std::fopen(path.c_str(), "rb"), std::fclose);
  if (!fp) throw RequestError(what + " '" + path + "' cannot be opened: check the path and its permissions");
  unsigned char sig[8] = {0};
  if (std::fread(sig, 1, 8, fp.get()) != 8 || png_sig_cmp(sig, 0, 8))
    throw RequestError(what + " '" + path + "' is not a PNG image the native runtime can read: give a PNG file");
  std::string err;
  PngRead r;
  r.png = png_create_read_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
  if (!r.png) throw RequestError("out of memory reading " + path);
  r.info = png_create_info_struct(r.png);
  int width = 0, height = 0, src_ch = 0;
  std::vector<uint8_t> raw;
  std::vector<png_bytep> rows;
  if (setjmp(png_jmpbuf(r.png))) {
    throw RequestError(what + " '" + path + "' cannot be read (" + (err.empty() ? "corrupt PNG" : err) +
                       "): check the file");
  }
  png_init_io(r.png, fp.get());
  png_set_sig_bytes(r.png, 8);
  png_read_info(r.png, r.info);
  png_set_palette_to_rgb(r.png);
  png_set_expand_gray_1_2_4_to_8(r.png);
  png_set_strip_16(r.png);
  png_set_strip_alpha(r.png);
  png_set_interlace_handling(r.png);
  png_read_update_info(r.png, r.info);
  width = static_cast<int>(png_get_image_width(r.png, r.info));
  height = static_cast<int>(png_get_image_height(r.png, r.info));
  src_ch = png_get_channels(r.png, r.info);
  if (width <= 0 || height <= 0 || static_cast<int64_t>(width) * height > (int64_t{1} << 28))
    throw RequestError(what + " '" + path + "' has an unsupported size " + std::to_string(width) + "x" +
                       std::to_string(height));
  raw.resize(static_cast<size_t>(width) * height * src_ch);
  rows.resize(height);
  for (int y = 0; y < height; ++y) rows[y] = raw.data() + static_cast<size_t>(y) * width * src_ch;
  png_read_image(r.png, rows.data());
  png_read_end(r.png, nullptr);

  Image8 out;
  out.width = width;
  out.height = height;
  out.channels = channels;
  out.pixels.resize(static_cast<size_t>(width) * height * channels);
  const size_t n = static_cast<size_t>(width) * height;
  for (size_t i = 0; i < n; ++i) {
    const uint8_t* s = raw.data() + i * src_ch;
    uint8_t* d = out.pixels.data() + i * channels;
    if (channels == 3) {
      if (src_ch >= 3) std::memcpy(d, s, 3);
      else d[0] = d[1] = d[2] = s[0];
    } else {
      d[0] = src_ch >= 3 ? rgb2l(s) : s[0];
    }
  }
  return out;
}

namespace {
struct PngWrite {
  png_structp png = nullptr;
  png_infop info = nullptr;
  ~PngWrite() { png_destroy_write_struct(&png, &info); }
};
// libpng reports errors by longjmp back here: a frame that holds no C++ object and changes no local
// after setjmp, so nothing is skipped or clobbered on that path.
bool png_write_rgb(png_structp png, png_infop info, FILE* fp, const uint8_t* rgb, int width, int height) {
  if (setjmp(png_jmpbuf(png))) return false;
  png_init_io(png, fp);
  png_set_IHDR(png, info, width, height, 8, PNG_COLOR_TYPE_RGB, PNG_INTERLACE_NONE, PNG_COMPRESSION_TYPE_DEFAULT,
               PNG_FILTER_TYPE_DEFAULT);
  png_write_info(png, info);
  for (int y = 0; y < height; ++y)
    png_write_row(png, const_cast<png_bytep>(rgb + static_cast<size_t>(y) * width * 3));
  png_write_end(png, nullptr);
  return true;
}
}  // namespace

void write_png_atomic(const std::string& path, const uint8_t* rgb, int width, int height) {
  namespace fs = std::filesystem;
  fs::path target(path);
  fs::path folder = fs::absolute(target).parent_path();
  std::string tmpl = (folder / ("." + target.filename().string() + ".XXXXXX")).string();
  std::vector<char> name(tmpl.begin(), tmpl.end());
  name.push_back('\0');
  int fd = mkstemp(name.data());
  if (fd < 0)
    throw RequestError("cannot write '" + path + "' (" + std::strerror(errno) + "): choose an existing, writable folder");
  const std::string tmp(name.data());
  FILE* fp = fdopen(fd, "wb");
  bool ok = fp != nullptr;
  std::string err;
  if (ok) {
    PngWrite w;
    w.png = png_create_write_struct(PNG_LIBPNG_VER_STRING, &err, png_error_fn, png_warning_fn);
    w.info = w.png ? png_create_info_struct(w.png) : nullptr;
    ok = w.png && w.info && png_write_rgb(w.png, w.info, fp, rgb, width, height);
  }
  if (fp) {
    ok = (std::fflush(fp) == 0) && ok;
    ok = (fsync(fileno(fp)) == 0) && ok;
    ok = (std::fclose(fp) == 0) && ok;
  } else {
    close(fd);
  }
  if (ok) {
    mode_t mask = umask(0);
    umask(mask);
    chmod(tmp.c_str(), 0666 & ~mask);
    std::error_code ec;
    fs::rename(tmp, target, ec);
    if (!ec) return;
    err = ec.message();
  }
  std::remove(tmp.c_str());
  throw RequestError("cannot write '" + path + "' (" + (err.empty() ? "write failed" : err) +
                     "): choose an existing, writable folder");
}

// ------------------------------------------------------------------------------------------------
// Geometry

Image8 crop(const Image8& im, int left, int top, int width, int height) {
  Image8 out;
  out.width = width;
  out.height = height;
  out.channels = im.channels;
  out.pixels.resize(static_cast<size_t>(width) * height * im.channels);
  for (int y = 0; y < height; ++y)
    std::memcpy(&out.pixels[static_cast<size_t>(y) * width * im.channels],
                &im.pixels[(static_cast<size_t>(y + top) * im.width + left) * im.channels],
                static_cast<size_t>(width) * im.channels);
  return out;
}

Image8 center_crop_to_aspect(const Image8& im, int height, int width) {
  const int w = im.width, h = im.height;
  int cw, ch;
  auto pyround = [](double v) { return static_cast<int>(std::nearbyint(v)); };  // round half to even
  if (static_cast<int64_t>(w) * height > static_cast<int64_t>(h) * width) {
    cw = std::max(1, pyround(static_cast<double>(h) * width / height));
    ch = h;
  } else {
    cw = w;
    ch = std::max(1, pyround(static_cast<double>(w) * height / width));
  }
  if (cw == w && ch == h) return im;
  const int left = pyround((w - cw) / 2.0), top = pyround((h - ch) / 2.0);
  return crop(im, left, top, cw, ch);
}

// ------------------------------------------------------------------------------------------------
// Pillow's resampling (Resample.c), 8 bits per channel

namespace {
constexpr int kPrecisionBits = 32 - 8 - 2;

double bicubic_filter(double x) {
  const double a = -0.5;
  if (x < 0.0) x = -x;
  if (x < 1.0) return ((a + 2.0) * x - (a + 3.0)) * x * x + 1;
  if (x < 2.0) return (((x - 5) * x + 8) * x - 4) * a;
  return 0.0;
}
double sinc_filter(double x) {
  if (x == 0.0) return 1.0;
  x = x * M_PI;
  return std::sin(x) / x;
}
double lanczos_filter(double x) {
  if (-3.0 <= x && x < 3.0) return sinc_filter(x) * sinc_filter(x / 3);
  return 0.0;
}

struct Coeffs {
  int ksize = 0;
  std::vector<int> bounds;   // (xmin, xmax) per output pixel
  std::vector<int32_t> kk;   // fixed-point coefficients, ksize per output pixel
};

Coeffs precompute_coeffs(int in_size, float in0, float in1, int out_size, double (*filter)(double), double fsupport) {
  double scale = static_cast<double>(in1 - in0) / out_size;
  double filterscale = scale < 1.0 ? 1.0 : scale;
  double support = fsupport * filterscale;
  Coeffs c;
  c.ksize = static_cast<int>(std::ceil(support)) * 2 + 1;
  std::vector<double> kk(static_cast<size_t>(out_size) * c.ksize);
  c.bounds.resize(static_cast<size_t>(out_size) * 2);
  for (int xx = 0; xx < out_size; ++xx) {
    double center = in0 + (xx + 0.5) * scale;
    double ww = 0.0, ss = 1.0 / filterscale;
    int xmin = static_cast<int>(center - support + 0.5);
    if (xmin < 0) xmin = 0;
    int xmax = static_cast<int>(center + support + 0.5);
    if (xmax > in_size) xmax = in_size;
    xmax -= xmin;
    double* k = &kk[static_cast<size_t>(xx) * c.ksize];
    int x = 0;
    for (; x < xmax; ++x) {
      double w = filter((x + xmin - center + 0.5) * ss);
      k[x] = w;
      ww += w;
    }
    for (x = 0; x < xmax; ++x)
      if (ww != 0.0) k[x] /= ww;
    for (; x < c.ksize; ++x) k[x] = 0;
    c.bounds[xx * 2] = xmin;
    c.bounds[xx * 2 + 1] = xmax;
  }
  c.kk.resize(kk.size());
  for (size_t i = 0; i < kk.size(); ++i)  // normalize_coeffs_8bpc
    c.kk[i] = kk[i] < 0 ? static_cast<int32_t>(-0.5 + kk[i] * (1 << kPrecisionBits))
                        : static_cast<int32_t>(0.5 + kk[i] * (1 << kPrecisionBits));
  return c;
}

uint8_t clip8(int32_t in) {
  int32_t v = in >> kPrecisionBits;
  return static_cast<uint8_t>(v < 0 ? 0 : (v > 255 ? 255 : v));
}

Image8 resample_horizontal(const Image8& in, int out_w, int offset, int rows, const Coeffs& c) {
  Image8 out;
  out.width = out_w;
  out.height = rows;
  out.channels = in.channels;
  out.pixels.resize(static_cast<size_t>(out_w) * rows * in.channels);
  for (int yy = 0; yy < rows; ++yy)
    for (int xx = 0; xx < out_w; ++xx) {
      const int xmin = c.bounds[xx * 2], xmax = c.bounds[xx * 2 + 1];
      const int32_t* k = &c.kk[static_cast<size_t>(xx) * c.ksize];
      for (int ch = 0; ch < in.channels; ++ch) {
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int x = 0; x < xmax; ++x) ss += in.at(x + xmin, yy + offset, ch) * k[x];
        out.pixels[(static_cast<size_t>(yy) * out_w + xx) * in.channels + ch] = clip8(ss);
      }
    }
  return out;
}

Image8 resample_vertical(const Image8& in, int out_h, const Coeffs& c, const std::vector<int>& bounds) {
  Image8 out;
  out.width = in.width;
  out.height = out_h;
  out.channels = in.channels;
  out.pixels.resize(static_cast<size_t>(in.width) * out_h * in.channels);
  for (int yy = 0; yy < out_h; ++yy) {
    const int32_t* k = &c.kk[static_cast<size_t>(yy) * c.ksize];
    const int ymin = bounds[yy * 2], ymax = bounds[yy * 2 + 1];
    for (int xx = 0; xx < in.width; ++xx)
      for (int ch = 0; ch < in.channels; ++ch) {
        int32_t ss = 1 << (kPrecisionBits - 1);
        for (int y = 0; y < ymax; ++y) ss += in.at(xx, y + ymin, ch) * k[y];
        out.pixels[(static_cast<size_t>(yy) * in.width + xx) * in.channels + ch] = clip8(ss);
      }
  }
  return out;
}

// Pillow's NEAREST resize: an affine scale (Geometry.c ImagingScaleAffine), positions accumulated.
Image8 resize_nearest(const Image8& in, int out_w, int out_h) {
  const double a0 = static_cast<double>(in.width) / out_w, a4 = static_cast<double>(in.height) / out_h;
  auto coord = [](double v) { return v < 0.0 ? -1 : static_cast<int>(v); };
  std::vector<int> xin(out_w, -1);
  double xo = a0 * 0.5;
  for (int x = 0; x < out_w; ++x) {
    xin[x] = coord(xo);
    xo += a0;
  }
  Image8 out;
  out.width = out_w;
  out.height = out_h;
  out.channels = in.channels;
  out.pixels.assign(static_cast<size_t>(out_w) * out_h * in.channels, 0);
  double yo = a4 * 0.5;
  for (int y = 0; y < out_h; ++y) {
    int yi = coord(yo);
    if (yi >= 0 && yi < in.height)
      for (int x = 0; x < out_w; ++x)
        if (xin[x] >= 0 && xin[x] < in.width)
          for (int ch = 0; ch < in.channels; ++ch)
            out.pixels[(static_cast<size_t>(y) * out_w + x) * in.channels + ch] = in.at(xin[x], yi, ch);
    yo += a4;
  }
  return out;
}
}  // namespace

Image8 resize(const Image8& im, int width, int height, Filter filter) {
  if (im.width == width && im.height == height) return im;
  if (filter == Filter::Nearest) return resize_nearest(im, width, height);
  double (*f)(double) = filter == Filter::Bicubic ? bicubic_filter : lanczos_filter;
  const double support = filter == Filter::Bicubic ? 2.0 : 3.0;
  const bool need_h = width != im.width, need_v = height != im.height;
  // Pillow >= 10: when the height shrinks by more than twice what the width does, the vertical
  // pass runs first (ImagingResampleInner's horizontal_first).
  const bool horizontal_first = !((im.height - height) > 0 && (im.height - height) > (im.width - width) * 2);
  Coeffs ch = precompute_coeffs(im.width, 0.0f, static_cast<float>(im.width), width, f, support);
  Coeffs cv = precompute_coeffs(im.height, 0.0f, static_cast<float>(im.height), height, f, support);
  std::vector<int> bounds_v = cv.bounds;
  Image8 cur = im;
  if (horizontal_first) {
    if (need_h) {
      const int ybox_first = bounds_v[0];
      const int ybox_last = bounds_v[height * 2 - 2] + bounds_v[height * 2 - 1];
      for (int i = 0; i < height; ++i) bounds_v[i * 2] -= ybox_first;
      cur = resample_horizontal(im, width, ybox_first, ybox_last - ybox_first, ch);
    }
    if (need_v) cur = resample_vertical(cur, height, cv, bounds_v);
  } else {
    if (need_v) cur = resample_vertical(cur, height, cv, bounds_v);
    if (need_h) cur = resample_horizontal(cur, width, 0, height, ch);
  }
  return cur;
}

}  // namespace gligen
