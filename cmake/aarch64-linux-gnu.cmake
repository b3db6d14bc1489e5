# Cross build for arm64 (Graviton) with Debian's cross compiler (g++-aarch64-linux-gnu) and
# the arm64 dependency tree of scripts/arm64-tree.sh (Debian's arm64 packages, extracted):
#
#   cmake -S . -B build/arm64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake \
#         -DIMDSTRACE_ARM64_TREE=$(scripts/arm64-tree.sh --cache build/kernels)
#
# scripts/cross-build.sh does exactly this. libc and libstdc++ come from the cross compiler
# (/usr/aarch64-linux-gnu); every other header, library, pkg-config and CMake package file from
# the tree. The BPF objects are compiled for arm64 (-D__TARGET_ARCH_arm64, arm64 asm/ headers)
# by the host's clang, and bpftool gen skeleton runs on the host.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)
set(CMAKE_LIBRARY_ARCHITECTURE aarch64-linux-gnu)
set(CMAKE_C_COMPILER aarch64-linux-gnu-gcc)
set(CMAKE_CXX_COMPILER aarch64-linux-gnu-g++)

if(NOT IMDSTRACE_ARM64_TREE AND DEFINED ENV{IMDSTRACE_ARM64_TREE})
  set(IMDSTRACE_ARM64_TREE $ENV{IMDSTRACE_ARM64_TREE})
endif()
if(NOT IMDSTRACE_ARM64_TREE OR NOT EXISTS "${IMDSTRACE_ARM64_TREE}/usr/include")
  message(FATAL_ERROR "IMDSTRACE_ARM64_TREE must name the tree scripts/arm64-tree.sh made")
endif()
# try_compile projects see the same tree.
list(APPEND CMAKE_TRY_COMPILE_PLATFORM_VARIABLES IMDSTRACE_ARM64_TREE)
set(_tree ${IMDSTRACE_ARM64_TREE})

set(CMAKE_FIND_ROOT_PATH ${_tree} /usr/aarch64-linux-gnu)
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)   # clang, bpftool, pkg-config: the host's
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

# The tree's headers AFTER the toolchain's own (-idirafter): libstdc++'s #include_next chain
# must reach the cross libc first. pkg-config drops -I/usr/include as a system directory, so
# these flags are what makes <bpf/libbpf.h>, <spdlog/...> etc. visible.
set(_inc "-idirafter ${_tree}/usr/include/aarch64-linux-gnu -idirafter ${_tree}/usr/include")
set(CMAKE_C_FLAGS_INIT "${_inc}")
set(CMAKE_CXX_FLAGS_INIT "${_inc}")
# Shared libraries' own dependencies (libbpf -> libelf, libz) are found through -rpath-link.
set(_lib "-L${_tree}/usr/lib/aarch64-linux-gnu -Wl,-rpath-link,${_tree}/usr/lib/aarch64-linux-gnu")
set(CMAKE_EXE_LINKER_FLAGS_INIT "${_lib}")
set(CMAKE_SHARED_LINKER_FLAGS_INIT "${_lib}")

set(ENV{PKG_CONFIG_DIR} "")
set(ENV{PKG_CONFIG_LIBDIR} "${_tree}/usr/lib/aarch64-linux-gnu/pkgconfig:${_tree}/usr/share/pkgconfig")
set(ENV{PKG_CONFIG_SYSROOT_DIR} "${_tree}")

# BPF: the arm64 UAPI asm/ headers of the cross packages (linux-libc-dev-arm64-cross).
set(BPF_ARCH_INCLUDE /usr/aarch64-linux-gnu/include CACHE PATH "asm/ headers for the BPF compile")
