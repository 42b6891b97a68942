// A disk image behind a virtio-blk device: a raw file or a block device, locked against a
// second user, read and written in batches through io_uring straight from and into guest
// memory. A batch runs to completion before run() returns, so a caller that holds the
// device lock never leaves a request in flight (docs/disks.md, "Requests and pauses").
#pragma once

#include <sys/uio.h>

#include <cerrno>

#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "common/unique_fd.hpp"

struct io_uring;

namespace understudy::hv::virtio {

inline constexpr uint64_t kSectorBytes = 512;

struct DiskOp {
    enum class Kind { read, write, flush } kind = Kind::flush;
    uint64_t offset = 0;         // bytes; read and write only
    std::vector<iovec> iov;      // guest memory; read and write only
    uint64_t bytes = 0;          // the sum of iov's lengths
    bool write_through = false;  // write only: durable before it completes (RWF_DSYNC)
    int64_t result = -ECANCELED; // after run(): bytes transferred, or -errno
    bool ok() const { return kind == Kind::flush ? result == 0 : result == int64_t(bytes); }
};

class DiskFile {
public:
    // Opens `path` (read-only if asked), takes a lock on it (shared for read-only, else
    // exclusive: two VMs writing one disk would corrupt it), checks its size (a non-zero
    // multiple of 512 bytes) and makes its io_uring, so that a host where io_uring is
    // refused (a seccomp filter, kernel.io_uring_disabled) fails here, not at the guest's
    // first I/O. `depth` bounds the operations in flight.
    static Result<std::unique_ptr<DiskFile>> open(const std::string& path, bool readonly, unsigned depth);
    ~DiskFile();
    DiskFile(const DiskFile&) = delete;
    DiskFile& operator=(const DiskFile&) = delete;

    const std::string& path() const { return path_; }
    uint64_t size_bytes() const { return size_; }
    bool readonly() const { return readonly_; }
    int fd() const { return fd_.get(); }

    // Runs every op and waits for all of them, filling each one's result. A flush starts
    // only after every op queued before it completed (IOSQE_IO_DRAIN) and is the host's
    // fdatasync. An error is returned only if io_uring itself fails; the ops it did not
    // run keep -ECANCELED, so none of them, a flush included, reads as done.
    Result<void> run(std::vector<DiskOp>& ops);

private:
    DiskFile(std::string path, UniqueFd fd, uint64_t size, bool readonly, unsigned depth);
    Result<void> make_ring();

    std::string path_;
    UniqueFd fd_;
    uint64_t size_;
    bool readonly_;
    unsigned depth_;
    std::unique_ptr<io_uring> ring_;
};

} // namespace understudy::hv::virtio
