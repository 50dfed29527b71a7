/* gligen_rt: the native GLIGEN runtime's C API.
 *
 * Open an exported engine folder on a backend, generate from a request (the JSON schema of the
 * Python CLI: gligen_rt/core/request.py) into an RGB buffer or PNG files, free. Every call returns
 * GLIGEN_RT_OK (0) or an error status and sets a one-line message (what is wrong and how to fix it)
 * readable with gligen_rt_last_error() on the same thread until the next call. No C++ exception
 * crosses this boundary.
 *
 *   gligen_rt_pipeline* p = NULL;
 *   if (gligen_rt_open("engines/", "openvino", 0, &p) != GLIGEN_RT_OK) puts(gligen_rt_last_error());
 *   gligen_rt_images im = {0};
 *   gligen_rt_generate(p, "{\"prompt\": \"a cat\", \"seed\": 1}", NULL, &im);   // im.rgb: N*H*W*3
 *   gligen_rt_images_free(&im);
 *   gligen_rt_close(p);
 *
 * A pipeline may run gligen_rt_generate from several threads at once; open and close may not.
 */
#ifndef GLIGEN_RT_H
#define GLIGEN_RT_H

#ifdef __cplusplus
extern "C" {
#endif

typedef enum gligen_rt_status {
  GLIGEN_RT_OK = 0,
  GLIGEN_RT_ERROR_REQUEST = 1,   /* the request is invalid (JSON, boxes, sizes, unreadable images) */
  GLIGEN_RT_ERROR_ENGINE = 2,    /* the engine folder is missing, corrupt or for another model */
  GLIGEN_RT_ERROR_BACKEND = 3,   /* the backend is not built in or cannot start */
  GLIGEN_RT_ERROR_NUMERICAL = 4, /* NaN or Inf in the latents or images: nothing was written */
  GLIGEN_RT_ERROR_INTERNAL = 5   /* a bug: the message says where */
} gligen_rt_status;

typedef struct gligen_rt_pipeline gligen_rt_pipeline;

typedef struct gligen_rt_images {
  int num_images, height, width;
  unsigned char* rgb;   /* num_images * height * width * 3 bytes, row-major RGB */
  char* timings_json;   /* {"total": s, "engines": s, "overhead": s, ..., "step_times": [...]} */
} gligen_rt_images;

/* The message of the last failed call on this thread ("" after a successful one). */
const char* gligen_rt_last_error(void);
const char* gligen_rt_version(void);
/* Comma-separated backends compiled into this library (e.g. "openvino,openvino-bf16,ort-cpu"). */
const char* gligen_rt_backends(void);

/* Open `engine_dir` on `backend` ("openvino", "openvino-bf16", "openvino-int8", "openvino-int8a",
 * "ort-cpu", "tensorrt"); threads 0 = the backend's default. Checks the manifests and loads every
 * engine: an OpenVINO backend loads the IR of `gligen-rt build --backend <backend>` when the folder
 * holds it (the two int8 backends need it), else the exported ONNX graphs. */
gligen_rt_status gligen_rt_open(const char* engine_dir, const char* backend, int threads, gligen_rt_pipeline** out);
void gligen_rt_close(gligen_rt_pipeline* pipeline);

/* Generate from request JSON text; relative paths in it resolve against base_dir (NULL: as given). */
gligen_rt_status gligen_rt_generate(gligen_rt_pipeline* pipeline, const char* request_json, const char* base_dir,
                                    gligen_rt_images* out);
/* Generate from a request JSON file (paths relative to its folder) and write PNG file(s):
 * out_png for one image, out_0.png, out_1.png, ... for several; each written to a temporary file
 * and renamed into place. `out` may be NULL; when given it also receives the pixels. */
gligen_rt_status gligen_rt_generate_file(gligen_rt_pipeline* pipeline, const char* request_path, const char* out_png,
                                         gligen_rt_images* out);
/* Parse a request JSON file without a model (syntax, keys, types): a quick check before open. */
gligen_rt_status gligen_rt_check_request_file(const char* request_path);
/* Parse a request JSON file and check it against an engine folder's manifests (model, modality,
 * size envelope, batch) without loading any engine: the check generate makes, in milliseconds. */
gligen_rt_status gligen_rt_check_request(const char* engine_dir, const char* request_path);
void gligen_rt_images_free(gligen_rt_images* images);

/* What an engine folder holds, as printable lines (no engine is loaded); free with gligen_rt_free. */
gligen_rt_status gligen_rt_inspect(const char* engine_dir, char** text);
void gligen_rt_free(void* p);

#ifdef __cplusplus
}
#endif
#endif /* GLIGEN_RT_H */
