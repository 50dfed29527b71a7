/* The C API from C: statuses, one-line error strings per call, NULL handling, generation into a
 * buffer, reuse of one pipeline for several requests. Usage: gligen_c_api_test TEXT_BOX_ENGINE_DIR */
#include <stdio.h>
#include <string.h>

#include "gligen_rt.h"

static int failures = 0;
#define CHECK(cond, what)                                              \
  do {                                                                 \
    if (!(cond)) {                                                     \
      fprintf(stderr, "FAIL %s (last error: %s)\n", what, gligen_rt_last_error()); \
      ++failures;                                                      \
    }                                                                  \
  } while (0)

static int one_line(const char* s) { return s[0] != '\0' && strchr(s, '\n') == NULL; }

int main(int argc, char** argv) {
  if (argc != 2) {
    fprintf(stderr, "usage: %s TEXT_BOX_ENGINE_DIR\n", argv[0]);
    return 2;
  }
  gligen_rt_pipeline* p = NULL;
  CHECK(gligen_rt_open("/nonexistent/engines", "openvino", 0, &p) == GLIGEN_RT_ERROR_ENGINE, "missing folder -> ENGINE");
  CHECK(p == NULL && one_line(gligen_rt_last_error()), "missing folder: NULL pipeline, one-line message");
  CHECK(gligen_rt_open(argv[1], "no-such-backend", 0, &p) == GLIGEN_RT_ERROR_BACKEND, "unknown backend -> BACKEND");
  CHECK(gligen_rt_open(NULL, "openvino", 0, &p) == GLIGEN_RT_ERROR_REQUEST, "NULL folder -> REQUEST");
  CHECK(gligen_rt_open(argv[1], "openvino", 0, &p) == GLIGEN_RT_OK && p != NULL, "open text-box folder");
  CHECK(strcmp(gligen_rt_last_error(), "") == 0, "success clears the error string");
  if (p == NULL) return 1;

  gligen_rt_images im;
  memset(&im, 0, sizeof im);
  const char* good =
      "{\"prompt\": \"a cat\", \"objects\": [{\"phrase\": \"a cat\", \"box\": [0.1, 0.1, 0.6, 0.9]}],"
      " \"seed\": 1, \"steps\": 2, \"height\": 64, \"width\": 128, \"num_images\": 2}";
  CHECK(gligen_rt_generate(p, good, NULL, &im) == GLIGEN_RT_OK, "generate into a buffer");
  CHECK(im.num_images == 2 && im.height == 64 && im.width == 128 && im.rgb != NULL, "buffer dimensions");
  CHECK(im.timings_json != NULL && strstr(im.timings_json, "\"step_times\"") != NULL, "timings JSON");
  unsigned long sum = 0;
  for (int i = 0; i < 2 * 64 * 128 * 3; ++i) sum += im.rgb[i];
  CHECK(sum > 0, "pixels written");
  gligen_rt_images_free(&im);
  CHECK(im.rgb == NULL && im.timings_json == NULL, "free resets the struct");
  gligen_rt_images_free(&im); /* twice is harmless */

  CHECK(gligen_rt_generate(p, "{\"prompt\": ", NULL, &im) == GLIGEN_RT_ERROR_REQUEST, "malformed JSON -> REQUEST");
  CHECK(one_line(gligen_rt_last_error()), "malformed JSON: one line");
  CHECK(gligen_rt_generate(p, "{\"prompt\": \"x\", \"objects\": [{\"phrase\": \"a\", \"box\": [0, 0, 1.5, 1]}]}", NULL,
                           &im) == GLIGEN_RT_ERROR_REQUEST,
        "box outside [0, 1] -> REQUEST");
  CHECK(strstr(gligen_rt_last_error(), "outside [0, 1]") != NULL, "box message names the problem");
  CHECK(gligen_rt_generate(p, "{\"prompt\": \"x\", \"height\": 4096}", NULL, &im) == GLIGEN_RT_ERROR_REQUEST,
        "size outside the envelope -> REQUEST");
  CHECK(gligen_rt_generate(p, "{\"prompt\": \"x\", \"persons\": []}", NULL, &im) == GLIGEN_RT_OK, "empty persons ok");
  gligen_rt_images_free(&im);
  CHECK(gligen_rt_generate(NULL, good, NULL, &im) == GLIGEN_RT_ERROR_REQUEST, "NULL pipeline -> REQUEST");

  char* text = NULL;
  CHECK(gligen_rt_inspect(argv[1], &text) == GLIGEN_RT_OK && text != NULL && strstr(text, "unet") != NULL, "inspect");
  gligen_rt_free(text);
  CHECK(strlen(gligen_rt_backends()) > 0, "backends listed");
  gligen_rt_close(p);
  gligen_rt_close(NULL);
  if (failures == 0) printf("c api: all checks passed\n");
  return failures == 0 ? 0 : 1;
}
