#include "hv/virtio/disk_file.hpp"

#include <fcntl.h>
#include <linux/fs.h>
#include <liburing.h>
#include <sys/file.h>
#include <sys/ioctl.h>
#include <sys/stat.h>

#include <algorithm>
#include <cstring>

#include <fmt/format.h>

namespace understudy::hv::virtio {

Result<std::unique_ptr<DiskFile>> DiskFile::open(const std::string& path, bool readonly, unsigned depth) {
    if (depth == 0 || depth > 4096) return make_error(Errc::invalid_input, fmt::format("disk queue depth {} is not in [1, 4096]", depth));
    UniqueFd fd(::open(path.c_str(), (readonly ? O_RDONLY : O_RDWR) | O_CLOEXEC));
    if (!fd.valid()) return sys_error("opening the disk " + path);
    if (::flock(fd.get(), (readonly ? LOCK_SH : LOCK_EX) | LOCK_NB) < 0) {
        if (errno == EWOULDBLOCK)
            return make_error(Errc::state, "the disk " + path + " is in use by another process (it holds a lock on it)");
        return sys_error("locking the disk " + path);
    }
    struct stat st{};
    if (::fstat(fd.get(), &st) < 0) return sys_error("stat of the disk " + path);
    uint64_t size = 0;
    if (S_ISREG(st.st_mode)) {
        size = uint64_t(st.st_size);
    } else if (S_ISBLK(st.st_mode)) {
        if (::ioctl(fd.get(), BLKGETSIZE64, &size) < 0) return sys_error("BLKGETSIZE64 on the disk " + path);
    } else {
        return make_error(Errc::invalid_input, "the disk " + path + " is neither a regular file nor a block device");
    }
    if (size == 0 || size % kSectorBytes)
        return make_error(Errc::invalid_input,
                          fmt::format("the disk {} has {} bytes: a disk must be a non-zero multiple of {} bytes", path,
                                      size, kSectorBytes));
    std::unique_ptr<DiskFile> f(new DiskFile(path, std::move(fd), size, readonly, depth));
    US_TRYV(f->make_ring());
    return f;
}

Result<void> DiskFile::make_ring() {
    auto ring = std::make_unique<io_uring>();
    if (int rc = io_uring_queue_init(depth_, ring.get(), 0); rc < 0)
        return sys_error("creating an io_uring for the disk " + path_ + " (is io_uring allowed here?)", -rc);
    ring_ = std::move(ring);
    return {};
}

DiskFile::DiskFile(std::string path, UniqueFd fd, uint64_t size, bool readonly, unsigned depth)
    : path_(std::move(path)), fd_(std::move(fd)), size_(size), readonly_(readonly), depth_(depth) {}

DiskFile::~DiskFile() {
    if (ring_) io_uring_queue_exit(ring_.get());
}

Result<void> DiskFile::run(std::vector<DiskOp>& ops) {
    for (DiskOp& op : ops) op.result = -ECANCELED; // until its completion says otherwise
    if (!ring_) US_TRYV(make_ring());              // dropped after a failure of io_uring
    io_uring* ring = ring_.get();
    for (size_t next = 0; next < ops.size();) {
        const size_t n = std::min<size_t>(depth_, ops.size() - next);
        for (size_t i = next; i < next + n; ++i) {
            DiskOp& op = ops[i];
            io_uring_sqe* sqe = io_uring_get_sqe(ring); // the ring has room for depth_ ops
            switch (op.kind) {
            case DiskOp::Kind::read:
                io_uring_prep_readv(sqe, fd_.get(), op.iov.data(), unsigned(op.iov.size()), op.offset);
                break;
            case DiskOp::Kind::write:
                io_uring_prep_writev(sqe, fd_.get(), op.iov.data(), unsigned(op.iov.size()), op.offset);
                if (op.write_through) sqe->rw_flags = RWF_DSYNC;
                break;
            case DiskOp::Kind::flush:
                io_uring_prep_fsync(sqe, fd_.get(), IORING_FSYNC_DATASYNC);
                sqe->flags |= IOSQE_IO_DRAIN;
                break;
            }
            io_uring_sqe_set_data64(sqe, i);
        }
        const int rc = io_uring_submit_and_wait(ring, unsigned(n));
        // Every op the kernel took is waited for, even when it did not take them all: none
        // may still write guest memory once the batch is answered.
        const size_t submitted = rc < 0 ? 0 : std::min<size_t>(size_t(rc), n);
        int err = rc < 0 ? -rc : (submitted < n ? EIO : 0);
        for (size_t done = 0; done < submitted;) {
            io_uring_cqe* cqe = nullptr;
            if (int w = io_uring_wait_cqe(ring, &cqe); w < 0) {
                if (w == -EINTR) continue;
                err = -w; // cannot happen with a valid ring; the ring is dropped below
                break;
            }
            ops[io_uring_cqe_get_data64(cqe)].result = cqe->res;
            io_uring_cqe_seen(ring, cqe);
            ++done;
        }
        if (err) {
            // Ops never taken stay -ECANCELED; the ring, in an unknown state, is dropped
            // and made again next time.
            io_uring_queue_exit(ring);
            ring_.reset();
            return sys_error("disk I/O through io_uring on " + path_, err);
        }
        next += n;
    }
    return {};
}

} // namespace understudy::hv::virtio
