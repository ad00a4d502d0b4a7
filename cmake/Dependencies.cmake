# Finds kiln's dependencies. OpenBLAS's OpenMP build is preferred so that BLAS and kiln's own
# kernels share one OpenMP thread pool; CUDA is optional and detected.
#
# A machine without a package manager (the GPU machines) can build kiln with less:
# -DKILN_BLAS=none (the CPU backend's GEMM as portable loops: correct, slow), -DKILN_WITH_ZLIB=OFF
# (gzip-compressed IDX files are refused with a message) and -DKILN_JSON_INCLUDE_DIR=<dir> (the
# header-only nlohmann/json.hpp from a folder). scripts/gpu_bundle.sh and gpu_check.sh do this.
find_package(OpenMP REQUIRED COMPONENTS CXX)

set(KILN_BLAS "openblas" CACHE STRING "BLAS for the CPU backend's matrix products: openblas, or none (portable loops)")
set_property(CACHE KILN_BLAS PROPERTY STRINGS openblas none)
if(KILN_BLAS STREQUAL "openblas")
  find_package(PkgConfig REQUIRED)
  # Debian installs the OpenMP build of OpenBLAS as pkg-config module "openblas" when
  # libopenblas-openmp-dev is installed (its include dir is openblas-openmp/).
  pkg_check_modules(OPENBLAS IMPORTED_TARGET openblas)
  if(NOT OPENBLAS_FOUND)
    message(FATAL_ERROR "kiln: OpenBLAS not found (pkg-config module 'openblas'). Install libopenblas-openmp-dev "
                        "(./scripts/setup.sh does), or configure with -DKILN_BLAS=none for slow portable loops.")
  endif()
  if(NOT OPENBLAS_INCLUDE_DIRS MATCHES "openmp")
    message(WARNING "kiln: OpenBLAS is not the OpenMP build (${OPENBLAS_INCLUDE_DIRS}); "
                    "BLAS and kiln kernels will use separate thread pools. Install libopenblas-openmp-dev.")
  endif()
elseif(KILN_BLAS STREQUAL "none")
  message(WARNING "kiln: KILN_BLAS=none: CPU matrix products run as portable loops, far slower than OpenBLAS")
else()
  message(FATAL_ERROR "kiln: KILN_BLAS must be openblas or none, got '${KILN_BLAS}'")
endif()

set(KILN_JSON_INCLUDE_DIR "" CACHE PATH "Directory holding nlohmann/json.hpp when nlohmann_json's CMake package is not installed")
if(KILN_JSON_INCLUDE_DIR)
  if(NOT EXISTS ${KILN_JSON_INCLUDE_DIR}/nlohmann/json.hpp)
    message(FATAL_ERROR "kiln: KILN_JSON_INCLUDE_DIR=${KILN_JSON_INCLUDE_DIR} holds no nlohmann/json.hpp")
  endif()
  add_library(kiln_nlohmann_json INTERFACE)
  target_include_directories(kiln_nlohmann_json INTERFACE ${KILN_JSON_INCLUDE_DIR})
  add_library(nlohmann_json::nlohmann_json ALIAS kiln_nlohmann_json)
else()
  find_package(nlohmann_json 3 REQUIRED)
endif()

# zlib inflates the gzip-compressed Fashion-MNIST IDX files (data/idx.cpp).
option(KILN_WITH_ZLIB "Read gzip-compressed IDX files (needs zlib)" ON)
if(KILN_WITH_ZLIB)
  find_package(ZLIB REQUIRED)
endif()
find_package(MPI COMPONENTS CXX)

set(KILN_HAVE_CUDA OFF)
if(KILN_ENABLE_CUDA)
  include(CheckLanguage)
  if(NOT CMAKE_CUDA_COMPILER AND EXISTS /usr/local/cuda/bin/nvcc)
    set(CMAKE_CUDA_COMPILER /usr/local/cuda/bin/nvcc)
  endif()
  check_language(CUDA)
  if(CMAKE_CUDA_COMPILER)
    set(CMAKE_CUDA_ARCHITECTURES ${KILN_CUDA_ARCHITECTURES})
    enable_language(CUDA)
    find_package(CUDAToolkit REQUIRED)
    set(KILN_HAVE_CUDA ON)
    message(STATUS "kiln: CUDA backend enabled (nvcc ${CMAKE_CUDA_COMPILER_VERSION}, architectures ${KILN_CUDA_ARCHITECTURES})")
  else()
    message(STATUS "kiln: no CUDA compiler found; building the CPU backend only")
  endif()
endif()
