// CRC-32C (Castagnoli), the checksum of TensorFlow's record framing (tfevents files).
//
// A small table-driven software implementation: event files are a few records per step, so
// speed does not matter and no SSE4.2 dispatch is needed.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>

namespace kiln::train {

// CRC-32C of `size` bytes at `data`. crc32c("123456789") == 0xE3069283 (the standard check value).
uint32_t crc32c(const void* data, size_t size);
inline uint32_t crc32c(std::string_view bytes) { return crc32c(bytes.data(), bytes.size()); }

// TensorFlow's masked CRC: the CRC rotated right by 15 bits plus a constant, so that a CRC of
// data that itself contains CRCs stays well distributed.
uint32_t masked_crc32c(const void* data, size_t size);

}  // namespace kiln::train
