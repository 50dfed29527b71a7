// 8-bit images: PNG reading and atomic writing (libpng), and the Pillow operations the Python
// runtime applies (convert to RGB / L, crop, resize with NEAREST / BICUBIC / LANCZOS), ported from
// Pillow's C sources so the pixels are the same (Convert.c rgb2l, Resample.c, Geometry.c).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace gligen {

struct Image8 {
  int width = 0, height = 0, channels = 0;  // channels: 1 (L) or 3 (RGB)
  std::vector<uint8_t> pixels;               // row-major, interleaved
  uint8_t at(int x, int y, int c) const { return pixels[(static_cast<size_t>(y) * width + x) * channels + c]; }
};

enum class Filter { Nearest, Bicubic, Lanczos };

// Decode a PNG into RGB (channels 3) or L (channels 1), like Pillow's open(path).convert(mode):
// palettes expand, alpha is dropped (not composited), RGB -> L uses Pillow's ITU-R 601-2 weights.
// RequestError (one line, naming `what`) when the file is not a PNG libpng can read.
Image8 read_png(const std::string& path, int channels, const std::string& what);
// Write (H, W, 3) uint8 as PNG through a temporary file renamed into place; RequestError on failure.
void write_png_atomic(const std::string& path, const uint8_t* rgb, int width, int height);

Image8 crop(const Image8& im, int left, int top, int width, int height);
Image8 resize(const Image8& im, int width, int height, Filter filter);
// gligen_rt.core.grounding.center_crop_to_aspect
Image8 center_crop_to_aspect(const Image8& im, int height, int width);

}  // namespace gligen
