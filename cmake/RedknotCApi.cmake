# The C ABI: shared library libredknot (target redknot_c, alias redknot::c) and the type-erased wrapper it
# shares with the Python module (target redknot_anystore).
#
# Included by the top-level CMakeLists.txt right after redknot_core is defined:
#   include(RedknotCApi)
# python/ and examples/c_embed/ include it themselves when the top level has not (include_guard makes a
# second include a no-op).
include_guard(GLOBAL)

# AnyStore: KVHeadStore<f32|f16|bf16> behind one runtime interface. Static and PIC so that it can go into the
# shared C library and into the Python extension alike.
add_library(redknot_anystore STATIC "${PROJECT_SOURCE_DIR}/src/c_api/any_store.cpp")
add_library(redknot::anystore ALIAS redknot_anystore)
set_target_properties(redknot_anystore PROPERTIES
  EXPORT_NAME anystore
  POSITION_INDEPENDENT_CODE ON
  CXX_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON)
target_link_libraries(redknot_anystore PUBLIC redknot::core)
redknot_enable_warnings(redknot_anystore)

# libredknot.so: exports only the rk_* functions of c_api.h. Everything else — the C++ code of redknot, and the
# static archives linked in — stays hidden, so C++ symbols never clash with a host process's own copies.
add_library(redknot_c SHARED "${PROJECT_SOURCE_DIR}/src/c_api/c_api.cpp")
add_library(redknot::c ALIAS redknot_c)
set_target_properties(redknot_c PROPERTIES
  EXPORT_NAME c
  OUTPUT_NAME redknot
  VERSION "${PROJECT_VERSION}"
  SOVERSION "${PROJECT_VERSION_MAJOR}"
  CXX_VISIBILITY_PRESET hidden
  VISIBILITY_INLINES_HIDDEN ON)
target_compile_definitions(redknot_c PRIVATE REDKNOT_C_BUILDING=1)
target_include_directories(redknot_c PUBLIC
  $<BUILD_INTERFACE:${PROJECT_SOURCE_DIR}/include>
  $<INSTALL_INTERFACE:${CMAKE_INSTALL_INCLUDEDIR}>)
target_link_libraries(redknot_c PRIVATE redknot_anystore)
if(CMAKE_SYSTEM_NAME STREQUAL "Linux")
  target_link_options(redknot_c PRIVATE "LINKER:--exclude-libs,ALL" "LINKER:--no-undefined")
endif()
redknot_enable_warnings(redknot_c)

# redknot::anystore is installed too, so that C++ bindings outside this tree can use any_store.hpp.
install(TARGETS redknot_c redknot_anystore
  EXPORT redknotTargets
  LIBRARY DESTINATION "${CMAKE_INSTALL_LIBDIR}"
  RUNTIME DESTINATION "${CMAKE_INSTALL_BINDIR}"
  ARCHIVE DESTINATION "${CMAKE_INSTALL_LIBDIR}")

# Catch2 tests of the C ABI (tests/c_api/). tests/CMakeLists.txt links its tests with redknot::core only, so
# this target is defined here; it is added at the end of the top-level directory, when enable_testing() has run.
function(_redknot_add_c_api_tests)
  if(NOT REDKNOT_BUILD_TESTS OR NOT EXISTS "${PROJECT_SOURCE_DIR}/tests/c_api/test_c_api.cpp")
    return()
  endif()
  find_package(Catch2 3 REQUIRED)
  include(Catch)
  add_executable(test_c_api "${PROJECT_SOURCE_DIR}/tests/c_api/test_c_api.cpp"
                            "${PROJECT_SOURCE_DIR}/tests/c_api/test_agreement.cpp"
                            "${PROJECT_SOURCE_DIR}/tests/c_api/test_chunks.cpp"
                            "${PROJECT_SOURCE_DIR}/tests/c_api/test_tiers_c.cpp")
  # redknot::core too: the tests compare with the C++ oracle (the C library hides its own copy of it) and run
  # the cases of tests/agreement_cases.json (read with nlohmann_json) through C++ and C alike.
  target_link_libraries(test_c_api PRIVATE Catch2::Catch2WithMain redknot::c redknot::core
                                           nlohmann_json::nlohmann_json)
  target_compile_definitions(test_c_api PRIVATE REDKNOT_SOURCE_DIR="${PROJECT_SOURCE_DIR}")
  redknot_enable_warnings(test_c_api)
  catch_discover_tests(test_c_api TEST_PREFIX "test_c_api/" PROPERTIES LABELS cpu)
endfunction()
cmake_language(DEFER DIRECTORY "${PROJECT_SOURCE_DIR}" CALL _redknot_add_c_api_tests)
