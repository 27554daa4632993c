# CMake toolchain file: cross-build qcompiler-run for 64-bit Arm Linux on an x86_64 host.
#   apt-get install g++-aarch64-linux-gnu qemu-user
#   cmake -S . -B build/runner-aarch64 -DCMAKE_TOOLCHAIN_FILE=cmake/aarch64-linux-gnu.cmake
#   cmake --build build/runner-aarch64 -j2
#   qemu-aarch64 -L /usr/aarch64-linux-gnu build/runner-aarch64/qcompiler-run ARTIFACT ...
# The aarch64 TVM runtime libraries are fetched from the aarch64 wheels at configure time and
# copied next to the executable (rpath $ORIGIN); see CMakeLists.txt for the overrides.
set(CMAKE_SYSTEM_NAME Linux)
set(CMAKE_SYSTEM_PROCESSOR aarch64)

set(QCOMPILER_CROSS_PREFIX "aarch64-linux-gnu-" CACHE STRING "cross toolchain prefix")
set(CMAKE_C_COMPILER "${QCOMPILER_CROSS_PREFIX}gcc")
set(CMAKE_CXX_COMPILER "${QCOMPILER_CROSS_PREFIX}g++")

# Debian/Ubuntu's cross packages install the target libc/libstdc++ here
set(QCOMPILER_SYSROOT "/usr/aarch64-linux-gnu" CACHE PATH "target libraries (qemu -L)")
set(CMAKE_FIND_ROOT_PATH "${QCOMPILER_SYSROOT}")
set(CMAKE_FIND_ROOT_PATH_MODE_PROGRAM NEVER)
set(CMAKE_FIND_ROOT_PATH_MODE_LIBRARY ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_INCLUDE ONLY)
set(CMAKE_FIND_ROOT_PATH_MODE_PACKAGE ONLY)

find_program(QCOMPILER_QEMU qemu-aarch64)
if(QCOMPILER_QEMU)
  set(CMAKE_CROSSCOMPILING_EMULATOR "${QCOMPILER_QEMU};-L;${QCOMPILER_SYSROOT}")
endif()
