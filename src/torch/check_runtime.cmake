# Fails the build when the extension module does not load the shared C++ runtime (libstdc++.so): with a
# private static copy, the std:: objects it exchanges with torch meet a second runtime whose state was
# never initialised, and the extension crashes at its first string op.
# usage: cmake -DREADELF=<readelf> -DMODULE=<libbik_torch.so> -P check_runtime.cmake
execute_process(COMMAND "${READELF}" -d "${MODULE}" OUTPUT_VARIABLE dyn RESULT_VARIABLE rc)
if(NOT rc EQUAL 0)
  message(FATAL_ERROR "bik: '${READELF} -d ${MODULE}' failed (${rc}); cannot check the extension's C++ runtime")
endif()
if(NOT dyn MATCHES "NEEDED[^\n]*libstdc\\+\\+\\.so|NEEDED[^\n]*libc\\+\\+\\.so")
  message(FATAL_ERROR "bik: ${MODULE} does not load the shared C++ runtime (no libstdc++.so or libc++.so "
                      "among its NEEDED entries): the compiler linked libstdc++ statically (-static-libstdc++ in "
                      "its flags, specs or a wrapper, or a library path holding libstdc++.a but no "
                      "libstdc++.so). torch would crash inside the extension; build with a compiler that "
                      "links libstdc++ dynamically.")
endif()
