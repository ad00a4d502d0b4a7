# Finds kiln's dependencies. OpenBLAS's OpenMP build is preferred so that BLAS and kiln's own
# kernels share one OpenMP thread pool; CUDA is optional and detected.
find_package(OpenMP REQUIRED COMPONENTS CXX)
find_package(PkgConfig REQUIRED)

# Debian installs the OpenMP build of OpenBLAS as pkg-config module "openblas" when
# libopenblas-openmp-dev is installed (its include dir is openblas-openmp/).
pkg_check_modules(OPENBLAS REQUIRED IMPORTED_TARGET openblas)
if(NOT OPENBLAS_INCLUDE_DIRS MATCHES "openmp")
  message(WARNING "kiln: OpenBLAS is not the OpenMP build (${OPENBLAS_INCLUDE_DIRS}); "
                  "BLAS and kiln kernels will use separate thread pools. Install libopenblas-openmp-dev.")
endif()

find_package(nlohmann_json 3 REQUIRED)
# zlib inflates the gzip-compressed Fashion-MNIST IDX files (data/idx.cpp).
find_package(ZLIB REQUIRED)
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
