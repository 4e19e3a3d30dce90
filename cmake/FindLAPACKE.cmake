# FindLAPACKE: the C interface to LAPACK (lapacke.h + liblapacke).
#
# Defines LAPACKE_FOUND, LAPACKE_INCLUDE_DIR, LAPACKE_LIBRARY and the imported target
# LAPACKE::LAPACKE. On Debian it comes from liblapacke-dev; OpenBLAS there is built without
# LAPACKE, so liblapacke is a separate library (it calls the LAPACK that LAPACK::LAPACK provides).
# Installed beside int4qConfig.cmake so that consumers find it the same way.

find_path(LAPACKE_INCLUDE_DIR NAMES lapacke.h PATH_SUFFIXES openblas lapacke)
find_library(LAPACKE_LIBRARY NAMES lapacke)

include(FindPackageHandleStandardArgs)
find_package_handle_standard_args(LAPACKE REQUIRED_VARS LAPACKE_LIBRARY LAPACKE_INCLUDE_DIR)
mark_as_advanced(LAPACKE_INCLUDE_DIR LAPACKE_LIBRARY)

if(LAPACKE_FOUND AND NOT TARGET LAPACKE::LAPACKE)
  add_library(LAPACKE::LAPACKE UNKNOWN IMPORTED)
  set_target_properties(LAPACKE::LAPACKE PROPERTIES
    IMPORTED_LOCATION "${LAPACKE_LIBRARY}"
    INTERFACE_INCLUDE_DIRECTORIES "${LAPACKE_INCLUDE_DIR}")
endif()
