// safetensors: 8-byte little-endian header length, a JSON header mapping names to
// {dtype, shape, data_offsets}, then the tensors' bytes back to back.
#include "autograd/safetensors.h"

#include <cstring>
#include <fstream>
#include <nlohmann/json.hpp>

namespace kiln {
namespace {

const char* safetensors_dtype(DType dtype) {
  switch (dtype) {
    case DType::f32: return "F32";
    case DType::f64: return "F64";
    case DType::bf16: return "BF16";
    case DType::f16: return "F16";
    case DType::i32: return "I32";
    case DType::i64: return "I64";
    case DType::boolean: return "BOOL";
  }
  return "?";
}

DType parse_dtype(const std::string& path, const std::string& name, const std::string& code) {
  static const std::map<std::string, DType> codes = {{"F32", DType::f32}, {"F64", DType::f64}, {"BF16", DType::bf16},
                                                      {"F16", DType::f16}, {"I32", DType::i32}, {"I64", DType::i64},
                                                      {"BOOL", DType::boolean}};
  auto found = codes.find(code);
  KILN_CHECK(found != codes.end(), "safetensors ", path, ": tensor '", name, "' has unsupported dtype ", code);
  return found->second;
}

}  // namespace

void save_safetensors(const std::string& path, const std::map<std::string, Tensor>& tensors,
                      const std::map<std::string, std::string>& metadata) {
  nlohmann::ordered_json header = nlohmann::ordered_json::object();
  if (!metadata.empty()) header["__metadata__"] = metadata;
  std::vector<Tensor> contiguous;
  uint64_t offset = 0;
  for (const auto& [name, tensor] : tensors) {
    KILN_CHECK(tensor.defined(), "safetensors ", path, ": tensor '", name, "' is undefined");
    Tensor host = tensor.detach().to(Device::cpu()).contiguous();
    uint64_t bytes = static_cast<uint64_t>(host.numel()) * dtype_size(host.dtype());
    header[name] = {{"dtype", safetensors_dtype(host.dtype())}, {"shape", host.sizes()}, {"data_offsets", {offset, offset + bytes}}};
    offset += bytes;
    contiguous.push_back(host);
  }
  std::string text = header.dump();
  // The data starts 8-byte aligned, as the reference implementation writes it.
  text.append((8 - text.size() % 8) % 8, ' ');
  std::ofstream out(path, std::ios::binary | std::ios::trunc);
  KILN_CHECK(out.good(), "safetensors ", path, ": cannot open for writing");
  uint64_t length = text.size();
  unsigned char length_bytes[8];
  for (int i = 0; i < 8; ++i) length_bytes[i] = static_cast<unsigned char>(length >> (8 * i));
  out.write(reinterpret_cast<const char*>(length_bytes), 8);
  out.write(text.data(), static_cast<std::streamsize>(text.size()));
  for (const Tensor& host : contiguous) {
    out.write(static_cast<const char*>(host.raw_data()),
              static_cast<std::streamsize>(static_cast<size_t>(host.numel()) * dtype_size(host.dtype())));
  }
  out.flush();
  KILN_CHECK(out.good(), "safetensors ", path, ": write failed");
}

SafetensorsFile load_safetensors(const std::string& path) {
  std::ifstream in(path, std::ios::binary | std::ios::ate);
  KILN_CHECK(in.good(), "safetensors ", path, ": cannot open for reading");
  auto file_size = static_cast<uint64_t>(in.tellg());
  KILN_CHECK(file_size >= 8, "safetensors ", path, ": file is ", file_size, " bytes, too short for a header");
  in.seekg(0);
  unsigned char length_bytes[8];
  in.read(reinterpret_cast<char*>(length_bytes), 8);
  uint64_t header_length = 0;
  for (int i = 0; i < 8; ++i) header_length |= static_cast<uint64_t>(length_bytes[i]) << (8 * i);
  KILN_CHECK(header_length <= file_size - 8, "safetensors ", path, ": header length ", header_length,
             " exceeds the file size ", file_size);
  std::string text(header_length, '\0');
  in.read(text.data(), static_cast<std::streamsize>(header_length));
  nlohmann::json header;
  try {
    header = nlohmann::json::parse(text);
  } catch (const nlohmann::json::exception& error) {
    KILN_FAIL("safetensors ", path, ": corrupt JSON header (", error.what(), ")");
  }
  KILN_CHECK(header.is_object(), "safetensors ", path, ": header is not a JSON object");
  uint64_t data_size = file_size - 8 - header_length;
  SafetensorsFile result;
  for (const auto& [name, entry] : header.items()) {
    if (name == "__metadata__") {
      for (const auto& [key, value] : entry.items()) result.metadata[key] = value.get<std::string>();
      continue;
    }
    try {
      DType dtype = parse_dtype(path, name, entry.at("dtype").get<std::string>());
      Shape shape = entry.at("shape").get<Shape>();
      auto offsets = entry.at("data_offsets").get<std::vector<uint64_t>>();
      KILN_CHECK(offsets.size() == 2 && offsets[0] <= offsets[1] && offsets[1] <= data_size, "safetensors ", path,
                 ": tensor '", name, "' has data offsets outside the ", data_size, " bytes of data");
      uint64_t expected = static_cast<uint64_t>(shape_numel(shape)) * dtype_size(dtype);
      KILN_CHECK(offsets[1] - offsets[0] == expected, "safetensors ", path, ": tensor '", name, "' of shape ",
                 shape_str(shape), " needs ", expected, " bytes but has ", offsets[1] - offsets[0]);
      Tensor tensor = empty(shape, TensorOptions(dtype));
      in.seekg(static_cast<std::streamoff>(8 + header_length + offsets[0]));
      in.read(static_cast<char*>(tensor.raw_data()), static_cast<std::streamsize>(expected));
      KILN_CHECK(in.good(), "safetensors ", path, ": read of tensor '", name, "' failed");
      result.tensors[name] = tensor;
    } catch (const nlohmann::json::exception& error) {
      KILN_FAIL("safetensors ", path, ": malformed entry for tensor '", name, "' (", error.what(), ")");
    }
  }
  return result;
}

}  // namespace kiln
