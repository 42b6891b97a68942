#include "hv/legacy/uart.hpp"

#include "common/codec.hpp"
#include "hv/vm.hpp"

namespace understudy::hv {

namespace {
// Register offsets and bits of the 16550 (the guest's view).
constexpr uint8_t kIerRxAvailable = 0x01, kIerThrEmpty = 0x02;
constexpr uint8_t kIirNone = 0x01, kIirThrEmpty = 0x02, kIirRxAvailable = 0x04, kIirFifoEnabled = 0xc0;
constexpr uint8_t kFcrEnable = 0x01, kFcrClearRx = 0x02;
constexpr uint8_t kLcrDlab = 0x80;
constexpr uint8_t kMcrDtr = 0x01, kMcrRts = 0x02, kMcrOut1 = 0x04, kMcrOut2 = 0x08, kMcrLoop = 0x10;
constexpr uint8_t kLsrDataReady = 0x01, kLsrThrEmpty = 0x20, kLsrIdle = 0x40;
constexpr uint8_t kMsrCts = 0x10, kMsrDsr = 0x20, kMsrRi = 0x40, kMsrDcd = 0x80;
constexpr uint32_t kUartStateVersion = 1;
} // namespace

Result<void> Uart::attach(Vm& vm) {
    if (!vm.config().pc_platform) return make_error(Errc::invalid_input, "the UART needs the VM's in-kernel irqchip");
    vm_ = &vm;
    return vm.pio().add(kCom1Port, 8, name(), [this](IoAccess& a) -> Result<void> {
        for (auto& b : a.data) US_TRYV(access(a.offset, b, a.is_write)); // Linux uses byte accesses; wider ones repeat
        return {};
    });
}

uint8_t Uart::interrupt_id() const {
    if ((ier_ & kIerRxAvailable) && !rx_.empty()) return kIirRxAvailable;
    if ((ier_ & kIerThrEmpty) && thr_empty_pending_) return kIirThrEmpty;
    return kIirNone;
}

Result<void> Uart::update_irq() {
    // OUT2 gates the interrupt onto the bus on a PC; Linux sets it before enabling IER.
    bool level = interrupt_id() != kIirNone && (mcr_ & kMcrOut2);
    if (level == irq_level_) return {};
    US_TRYV(vm_->set_irq_line(kCom1Irq, level));
    irq_level_ = level; // only once KVM has it: a failed call is retried by the next access
    return {};
}

Result<void> Uart::access(uint64_t offset, uint8_t& v, bool is_write) {
    std::string_view sent;
    char out = 0;
    {
        std::lock_guard lock(mu_);
        const bool dlab = lcr_ & kLcrDlab;
        if (is_write) {
            switch (offset) {
            case 0:
                if (dlab) {
                    dll_ = v;
                } else if (mcr_ & kMcrLoop) {
                    if (rx_.size() < kInputLimit) rx_.push_back(v);
                    thr_empty_pending_ = true;
                } else {
                    out = static_cast<char>(v);
                    sent = {&out, 1};
                    thr_empty_pending_ = true; // sent at once: the holding register is empty again
                }
                break;
            case 1:
                if (dlab) {
                    dlm_ = v;
                } else {
                    // Enabling the interrupt while the transmitter is empty raises it at once.
                    if ((v & kIerThrEmpty) && !(ier_ & kIerThrEmpty)) thr_empty_pending_ = true;
                    ier_ = v & 0x0f;
                }
                break;
            case 2:
                fcr_ = v & kFcrEnable;
                if (v & kFcrClearRx) rx_.clear();
                break;
            case 3: lcr_ = v; break;
            case 4: mcr_ = v & 0x1f; break;
            case 7: scr_ = v; break;
            default: break; // LSR and MSR are read-only
            }
        } else {
            switch (offset) {
            case 0:
                if (dlab) {
                    v = dll_;
                } else if (!rx_.empty()) {
                    v = rx_.front();
                    rx_.pop_front();
                } else {
                    v = 0;
                }
                break;
            case 1: v = dlab ? dlm_ : ier_; break;
            case 2: {
                uint8_t id = interrupt_id();
                if (id == kIirThrEmpty) thr_empty_pending_ = false; // reading IIR acknowledges it
                v = id | (fcr_ & kFcrEnable ? kIirFifoEnabled : 0);
                break;
            }
            case 3: v = lcr_; break;
            case 4: v = mcr_; break;
            case 5: v = kLsrThrEmpty | kLsrIdle | (rx_.empty() ? 0 : kLsrDataReady); break;
            case 6:
                if (mcr_ & kMcrLoop) {
                    v = (mcr_ & kMcrRts ? kMsrCts : 0) | (mcr_ & kMcrDtr ? kMsrDsr : 0) | (mcr_ & kMcrOut1 ? kMsrRi : 0) |
                        (mcr_ & kMcrOut2 ? kMsrDcd : 0);
                } else {
                    v = kMsrCts | kMsrDsr | kMsrDcd; // a terminal is always there
                }
                break;
            case 7: v = scr_; break;
            default: v = 0xff; break;
            }
        }
        US_TRYV(update_irq());
    }
    if (!sent.empty()) vm_->console_write(sent);
    return {};
}

size_t Uart::receive(std::string_view bytes) {
    std::lock_guard lock(mu_);
    // Until the guest's driver enables the receive interrupt it is not listening: its
    // start-up clears the FIFO, and Linux masks the interrupt to throttle. Input waits.
    if (!(ier_ & kIerRxAvailable) || suspended_) return 0;
    size_t taken = 0;
    for (char c : bytes) {
        if (rx_.size() >= kInputLimit) break;
        rx_.push_back(static_cast<uint8_t>(c));
        ++taken;
    }
    if (vm_) (void)update_irq(); // a failed KVM_IRQ_LINE here has no guest access to fail; the next access retries
    return taken;
}

void Uart::suspend() {
    std::lock_guard lock(mu_);
    suspended_ = true;
}

void Uart::resume() {
    std::lock_guard lock(mu_);
    suspended_ = false;
}

DeviceState Uart::save() const {
    std::lock_guard lock(mu_);
    DeviceState ds{name(), kUartStateVersion, {}};
    Encoder e(ds.data);
    for (uint8_t r : {ier_, lcr_, mcr_, scr_, dll_, dlm_, fcr_, uint8_t(thr_empty_pending_)}) e.raw(&r, 1);
    e.u32(static_cast<uint32_t>(rx_.size()));
    for (uint8_t b : rx_) e.raw(&b, 1);
    return ds;
}

Result<void> Uart::restore(const DeviceState& s) {
    if (s.version != kUartStateVersion)
        return make_error(Errc::invalid_input, "UART state version " + std::to_string(s.version) + " is not supported");
    Decoder d(s.data, "UART state");
    auto regs = US_TRY(d.bytes(8));
    uint32_t n = US_TRY(d.u32());
    if (n > kInputLimit) return d.error("holds " + std::to_string(n) + " unread bytes; the limit is " + std::to_string(kInputLimit));
    auto rx = US_TRY(d.bytes(n));
    if (!d.done()) return d.error("has trailing bytes");
    if (regs[7] > 1) return d.error("has a bad interrupt flag");
    std::lock_guard lock(mu_);
    ier_ = regs[0] & 0x0f, lcr_ = regs[1], mcr_ = regs[2] & 0x1f, scr_ = regs[3], dll_ = regs[4], dlm_ = regs[5];
    fcr_ = regs[6] & kFcrEnable, thr_empty_pending_ = regs[7] != 0;
    rx_.assign(rx.begin(), rx.end());
    // The irqchip's line level is restored with the irqchip; recompute ours to match.
    irq_level_ = interrupt_id() != kIirNone && (mcr_ & kMcrOut2);
    return {};
}

} // namespace understudy::hv
