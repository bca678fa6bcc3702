// Typed exceptions: every failure the library reports is one of these, so callers can tell a bad
// argument from a GPU fault from an exhausted device.
#pragma once

#include <stdexcept>
#include <string>

namespace htfr {

/// Base of every exception thrown by htfr.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

/// An argument is invalid: wrong shape, K = 0 or K > N, empty batch, null pointer, bad config.
class InvalidArgument : public Error {
 public:
  using Error::Error;
};

/// An input or target holds NaN or Inf; nothing was changed.
class NonFiniteInput : public Error {
 public:
  using Error::Error;
};

/// A pointer lives on the wrong device (host memory for the CUDA backend, device memory for the
/// CPU backend, or another GPU than the pool's).
class WrongDevice : public Error {
 public:
  using Error::Error;
};

/// No usable CUDA device, or the CUDA backend was asked for where none exists.
class NoDevice : public Error {
 public:
  using Error::Error;
};

/// A device or host allocation failed.
class OutOfMemory : public Error {
 public:
  using Error::Error;
};

/// A CUDA runtime, cuBLAS, cuRAND or cuSOLVER call failed; the message names the call, file and
/// line.
class CudaError : public Error {
 public:
  using Error::Error;
};

/// A file could not be opened, read, written or renamed; the message names the path.
class IoError : public Error {
 public:
  using Error::Error;
};

/// A file exists but its contents are wrong: truncated, corrupt header, inconsistent sizes or
/// checksums, or fields that disagree with what the reader expects. The message names the file
/// and the first problem found.
class FormatError : public Error {
 public:
  using Error::Error;
};

}  // namespace htfr
