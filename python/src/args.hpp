// Converting Python arguments to C++ values with redknot's error contract.
//
// pybind11's own casters answer a value that does not fit (2**40 for an int, 1e999, a str where an int is
// expected, None, a str that cannot be encoded as UTF-8) with a TypeError ("incompatible function arguments")
// or an OverflowError that names neither the argument nor the value. The bindings therefore take such
// arguments as py::object and convert them here: anything wrong throws redknot::InvalidArgument naming the
// function, the argument and the value, which the module's translator turns into redknot.InvalidArgument.
#pragma once

#include <pybind11/numpy.h>
#include <pybind11/pybind11.h>

#include <cmath>
#include <cstdint>
#include <limits>
#include <string>
#include <type_traits>

#include "redknot/error.hpp"

namespace redknot::py_bindings {

namespace py = pybind11;

// repr(h), shortened, never throwing: for messages only.
inline std::string safe_repr(py::handle h) {
  // ascii(): repr with non-ASCII escaped, so the message stays valid UTF-8 whatever the object holds.
  PyObject* a = PyObject_ASCII(h.ptr());
  if (!a) {
    PyErr_Clear();
    return "<unrepresentable>";
  }
  Py_ssize_t n = 0;
  const char* s = PyUnicode_AsUTF8AndSize(a, &n);
  std::string out = s ? std::string(s, static_cast<std::size_t>(n)) : std::string("<unrepresentable>");
  if (!s) PyErr_Clear();
  Py_DECREF(a);
  constexpr std::size_t kMax = 80;
  if (out.size() > kMax) out = out.substr(0, kMax) + "...";
  return out;
}

inline std::string type_name(py::handle h) { return Py_TYPE(h.ptr())->tp_name; }

template <class T>
constexpr const char* int_type_name() {
  if constexpr (std::is_same_v<T, std::int32_t>) return "int32";
  if constexpr (std::is_same_v<T, std::int64_t>) return "int64";
  return "integer";
}

// An integer argument of C type T. Accepts int and anything with __index__ (numpy integers); rejects bool,
// float, str, None, ... and values outside T.
template <class T>
T int_arg(py::handle h, const char* fn, const char* name) {
  static_assert(std::is_integral_v<T> && std::is_signed_v<T> && sizeof(T) <= sizeof(long long));
  const auto bad_type = [&] {
    return InvalidArgument(
        detail::concat(fn, ": ", name, " must be an integer, got ", type_name(h), " ", safe_repr(h)));
  };
  if (h.ptr() == nullptr || h.is_none() || PyBool_Check(h.ptr()) || PyFloat_Check(h.ptr()) ||
      PyUnicode_Check(h.ptr()) || PyBytes_Check(h.ptr()))
    throw bad_type();
  PyObject* idx = PyNumber_Index(h.ptr());
  if (!idx) {
    PyErr_Clear();
    throw bad_type();
  }
  int overflow = 0;
  const long long v = PyLong_AsLongLongAndOverflow(idx, &overflow);
  const bool failed = v == -1 && PyErr_Occurred();
  if (failed) PyErr_Clear();
  const py::object as_int = py::reinterpret_steal<py::object>(idx);
  if (failed || overflow != 0 || v < static_cast<long long>(std::numeric_limits<T>::min()) ||
      v > static_cast<long long>(std::numeric_limits<T>::max()))
    throw InvalidArgument(detail::concat(fn, ": ", name, "=", safe_repr(as_int), " does not fit in ",
                                         int_type_name<T>(), " [", std::numeric_limits<T>::min(), ", ",
                                         std::numeric_limits<T>::max(), "]"));
  return static_cast<T>(v);
}

// A real-number argument: int, float or anything with __float__ (numpy floats); rejects bool, str, None.
// Non-finite values are returned as they are (callers check ranges); ints too large for a double are an
// error.
inline double float_arg(py::handle h, const char* fn, const char* name) {
  const auto bad_type = [&] {
    return InvalidArgument(
        detail::concat(fn, ": ", name, " must be a number, got ", type_name(h), " ", safe_repr(h)));
  };
  if (h.ptr() == nullptr || h.is_none() || PyBool_Check(h.ptr()) || PyUnicode_Check(h.ptr()) ||
      PyBytes_Check(h.ptr()) || PyByteArray_Check(h.ptr()))
    throw bad_type();
  PyObject* f = PyNumber_Float(h.ptr());
  if (!f) {
    const bool overflow = PyErr_ExceptionMatches(PyExc_OverflowError);
    PyErr_Clear();
    if (overflow)
      throw InvalidArgument(detail::concat(fn, ": ", name, "=", safe_repr(h), " does not fit in a double"));
    throw bad_type();
  }
  const double v = PyFloat_AsDouble(f);
  Py_DECREF(f);
  return v;
}

// A real-number argument passed on as a C float (float_arg, then narrowed): a finite value beyond the float
// range, or a nonzero one that would round to 0 (which the core reads as "default"), does not fit and is an
// error naming the value. NaN and infinities pass through for the core's range check.
inline float float32_arg(py::handle h, const char* fn, const char* name) {
  const double v = float_arg(h, fn, name);
  const bool fits = !std::isfinite(v) || (std::fabs(v) <= std::numeric_limits<float>::max() &&
                                          (v == 0.0 || static_cast<float>(v) != 0.f));
  if (!fits)
    throw InvalidArgument(detail::concat(fn, ": ", name, "=", safe_repr(h), " does not fit in float32"));
  return static_cast<float>(v);
}

// A str argument as UTF-8 (bytes are taken as they are when allow_bytes).
inline std::string str_arg(py::handle h, const char* fn, const char* name, bool allow_bytes = false) {
  if (h.ptr() != nullptr && PyUnicode_Check(h.ptr())) {
    Py_ssize_t n = 0;
    const char* s = PyUnicode_AsUTF8AndSize(h.ptr(), &n);
    if (!s) {
      PyErr_Clear();
      throw InvalidArgument(detail::concat(fn, ": ", name, "=", safe_repr(h), " cannot be encoded as UTF-8"));
    }
    return std::string(s, static_cast<std::size_t>(n));
  }
  if (allow_bytes && h.ptr() != nullptr && (PyBytes_Check(h.ptr()) || PyByteArray_Check(h.ptr()))) {
    if (PyBytes_Check(h.ptr()))
      return std::string(PyBytes_AS_STRING(h.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(h.ptr())));
    return std::string(PyByteArray_AS_STRING(h.ptr()),
                       static_cast<std::size_t>(PyByteArray_GET_SIZE(h.ptr())));
  }
  throw InvalidArgument(detail::concat(fn, ": ", name, " must be a str", allow_bytes ? " (or bytes)" : "",
                                       ", got ", type_name(h), " ", safe_repr(h)));
}

// A file-system path (str, bytes or os.PathLike) as the bytes the OS sees (os.fsencode), so that names that
// are not valid UTF-8 still open the right file.
inline std::string path_arg(py::handle h, const char* fn, const char* name) {
  const py::module_ os = py::module_::import("os");
  py::object encoded;
  try {
    encoded = os.attr("fsencode")(h);
  } catch (py::error_already_set&) {
    throw InvalidArgument(detail::concat(fn, ": ", name, " must be a str, bytes or os.PathLike, got ",
                                         type_name(h), " ", safe_repr(h)));
  }
  if (!PyBytes_Check(encoded.ptr()))
    throw InvalidArgument(detail::concat(fn, ": ", name, " must be a str, bytes or os.PathLike, got ",
                                         type_name(h), " ", safe_repr(h)));
  std::string s(PyBytes_AS_STRING(encoded.ptr()), static_cast<std::size_t>(PyBytes_GET_SIZE(encoded.ptr())));
  if (s.find('\0') != std::string::npos)
    throw InvalidArgument(detail::concat(fn, ": ", name, "=", safe_repr(h), " contains a NUL byte"));
  return s;
}

// A 1-D integer metadata array of exactly dtype T, C-contiguous (redknot/_store.py prepares them).
template <class T>
py::array_t<T, py::array::c_style> int_array_arg(py::handle h, const char* fn, const char* name) {
  using A = py::array_t<T, py::array::c_style>;
  if (!A::check_(h))
    throw InvalidArgument(detail::concat(fn, ": ", name, " must be a C-contiguous numpy array of ",
                                         int_type_name<T>(), ", got ", type_name(h), " ", safe_repr(h),
                                         " (use redknot.Store, which converts)"));
  return py::reinterpret_borrow<A>(h);
}

// A float32 array, C-contiguous (redknot/_store.py prepares them); its shape is the caller's to check.
inline py::array_t<float, py::array::c_style> float32_array_arg(py::handle h, const char* fn,
                                                                const char* name) {
  using A = py::array_t<float, py::array::c_style>;
  if (!A::check_(h))
    throw InvalidArgument(detail::concat(fn, ": ", name,
                                         " must be a C-contiguous numpy array of float32, got ", type_name(h),
                                         " ", safe_repr(h), " (use the redknot package, which converts)"));
  return py::reinterpret_borrow<A>(h);
}

}  // namespace redknot::py_bindings
