# gligen_bits: the CLIP BPE tokenizer and numpy-exact noise of the native runtime.
# Included by runtime/native/CMakeLists.txt; needs C++17 and nlohmann-json (nlohmann-json3-dev) for
# vocab.json. The Unicode/ftfy data are generated tables (clip_text_tables.h), not ICU: the Python
# pipeline mixes three Unicode versions (Python's, the tokenizers regex engine's, Rust's) that no
# one library version reproduces.
find_package(nlohmann_json 3 REQUIRED)

set(GLIGEN_BITS_DIR ${CMAKE_CURRENT_LIST_DIR})
add_library(gligen_bits STATIC
  ${GLIGEN_BITS_DIR}/clip_tokenizer.cc
  ${GLIGEN_BITS_DIR}/noise.cc)
target_include_directories(gligen_bits PUBLIC ${GLIGEN_BITS_DIR})
target_compile_features(gligen_bits PUBLIC cxx_std_17)
target_compile_options(gligen_bits PRIVATE -Wall -Wextra)
set_target_properties(gligen_bits PROPERTIES POSITION_INDEPENDENT_CODE ON)
# numpy's float arithmetic, operation for operation: no fused multiply-add contraction
set_source_files_properties(${GLIGEN_BITS_DIR}/noise.cc PROPERTIES COMPILE_OPTIONS "-ffp-contract=off;-fno-fast-math")
target_link_libraries(gligen_bits PRIVATE nlohmann_json::nlohmann_json)
