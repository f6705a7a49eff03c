# Helpers shared by redknot's CMakeLists files.
include_guard(GLOBAL)

# redknot_enable_warnings(<target>)
#   -Wall -Wextra for the target's C++ sources (and, forwarded to the host
#   compiler, for its CUDA sources). Never -Werror.
function(redknot_enable_warnings target)
  if(CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-Wall -Wextra>)
  elseif(MSVC)
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:/W4>)
  endif()
  if(CMAKE_CUDA_COMPILER_ID STREQUAL "NVIDIA")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CUDA>:-Xcompiler=-Wall>)
  endif()
endfunction()

# redknot_native_arch(<target>)
#   Programs that run where they are built (benchmarks, examples) compile the header-only kernels for the
#   build machine's ISA (-march=native: AVX2/FMA/AVX-512 where present), when REDKNOT_NATIVE_ARCH is ON.
#   The library and the tests stay portable.
function(redknot_native_arch target)
  if(REDKNOT_NATIVE_ARCH AND CMAKE_CXX_COMPILER_ID MATCHES "GNU|Clang")
    target_compile_options(${target} PRIVATE $<$<COMPILE_LANGUAGE:CXX>:-march=native>)
  endif()
endfunction()
