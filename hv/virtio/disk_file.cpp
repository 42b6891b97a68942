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
    return std::unique_ptr<DiskFile>(new DiskFile(path, std::move(fd), size, readonly, depth));
}

DiskFile::DiskFile(std::string path, UniqueFd fd, uint64_t size, bool readonly, unsigned depth)
    : path_(std::move(path)), fd_(std::move(fd)), size_(size), readonly_(readonly), depth_(depth) {}

DiskFile::~DiskFile() {
    if (ring_) io_uring_queue_exit(ring_.get());
}

Result<void> DiskFile::run(std::vector<DiskOp>& ops) {
    if (!ring_) { // made on first use, so that a disk the guest never touches costs nothing
        auto ring = std::make_unique<io_uring>();
        if (int rc = io_uring_queue_init(depth_, ring.get(), 0); rc < 0) return sys_error("io_uring for the disk " + path_, -rc);
        ring_ = std::move(ring);
    }
    io_uring* ring = ring_.get();
    size_t next = 0;
    while (next < ops.size()) {
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
                break;
            case DiskOp::Kind::flush:
                io_uring_prep_fsync(sqe, fd_.get(), IORING_FSYNC_DATASYNC);
                sqe->flags |= IOSQE_IO_DRAIN;
                break;
            }
            io_uring_sqe_set_data64(sqe, i);
        }
        for (size_t i = next; i < next + n; ++i) ops[i].result = -ECANCELED; // until its completion says otherwise
        const int rc = io_uring_submit_and_wait(ring, unsigned(n));
        size_t done = 0;
        int err = rc < 0 ? -rc : (size_t(rc) < n ? EIO : 0);
        while (!err && done < n) {
            io_uring_cqe* cqe = nullptr;
            if (int w = io_uring_wait_cqe(ring, &cqe); w < 0) {
                if (w != -EINTR) err = -w;
                continue;
            }
            ops[io_uring_cqe_get_data64(cqe)].result = cqe->res;
            io_uring_cqe_seen(ring, cqe);
            ++done;
        }
        if (err) {
            // The ring is in an unknown state: drop it (the kernel finishes or cancels what
            // it still holds) and make a new one next time. Unfinished ops stay -ECANCELED.
            io_uring_queue_exit(ring);
            ring_.reset();
            for (size_t i = next + n; i < ops.size(); ++i) ops[i].result = -ECANCELED;
            return sys_error("disk I/O through io_uring on " + path_, err);
        }
        next += n;
    }
    return {};
}

} // namespace understudy::hv::virtio
