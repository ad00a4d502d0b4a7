// Storage allocation through the device's counting allocator.
#include "autograd/storage.h"

#include "kernels/error.h"

namespace kiln {

Storage::Storage(size_t bytes, Device device) : bytes_(bytes), device_(device) {
  allocator_ = &allocator_for(device);
  data_ = allocator_->allocate(bytes);
}

Storage::~Storage() { release_data(); }

void Storage::release_data() {
  if (data_ != nullptr) allocator_->deallocate(data_, bytes_);
  data_ = nullptr;
}

void Storage::take_data(Storage& other) {
  KILN_CHECK(other.bytes_ == bytes_ && other.device_ == device_ && other.allocator_ == allocator_,
             "Storage::take_data: sizes or devices differ (", other.bytes_, " bytes on ", other.device_.str(), " vs ",
             bytes_, " bytes on ", device_.str(), ")");
  release_data();
  data_ = other.data_;
  other.data_ = nullptr;
}

}  // namespace kiln
