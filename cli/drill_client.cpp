#include "cli/drill_client.hpp"

#include <algorithm>

#include <fmt/format.h>

#include "cli/stop_signals.hpp"

namespace understudy::cli {

using std::chrono::duration;
using std::chrono::milliseconds;
using Clock = std::chrono::steady_clock;

namespace {
constexpr auto kConnectTimeout = milliseconds(1000);
constexpr size_t kReadbackBatch = 100;
} // namespace

double unix_now() { return duration<double>(std::chrono::system_clock::now().time_since_epoch()).count(); }

void DrillClient::start() {
    for (unsigned i = 0; i < stats_.size(); ++i) threads_.emplace_back([this, i] { write_loop(i); });
}

void DrillClient::stop() {
    stop_ = true;
    for (auto& t : threads_) t.join();
    threads_.clear();
}

bool DrillClient::wait_ready(Clock::time_point deadline, bool& interrupted) {
    for (;;) {
        {
            std::lock_guard lock(mu_);
            bool all = true;
            for (const auto& s : stats_) all = all && s.replied;
            if (all) return true;
        }
        if (Clock::now() >= deadline) return false;
        if (take_stop_signal(milliseconds(20)) != 0) {
            interrupted = true;
            return false;
        }
    }
}

std::optional<DrillClient::Clock::time_point> DrillClient::reply_after(Clock::time_point t) const {
    std::lock_guard lock(mu_);
    std::optional<Clock::time_point> first;
    for (auto r : replies_)
        if (r > t && (!first || r < *first)) first = r;
    return first;
}

std::optional<DrillClient::Clock::time_point> DrillClient::last_reply() const {
    std::lock_guard lock(mu_);
    if (replies_.empty()) return std::nullopt;
    return *std::max_element(replies_.begin(), replies_.end());
}

std::vector<DrillClient::Clock::time_point> DrillClient::replies() const {
    std::lock_guard lock(mu_);
    auto r = replies_;
    std::sort(r.begin(), r.end());
    return r;
}

std::map<std::string, std::string> DrillClient::acknowledged() const {
    std::lock_guard lock(mu_);
    return acked_;
}

std::vector<ConnStats> DrillClient::stats() const {
    std::lock_guard lock(mu_);
    return stats_;
}

void DrillClient::note_error(unsigned ci, const std::string& what) {
    std::lock_guard lock(mu_);
    if (stats_[ci].errors.size() < 3) stats_[ci].errors.push_back(fmt::format("{:.3f} {}", unix_now(), what));
}

void DrillClient::write_loop(unsigned ci) {
    std::optional<RespConn> conn;
    uint64_t seq = 0;
    auto backoff = milliseconds(25);
    bool connected_once = false;
    while (!stop_) {
        if (!conn) {
            auto c = RespConn::connect(service_, Clock::now() + kConnectTimeout);
            if (!c) {
                {
                    std::lock_guard lock(mu_);
                    ++stats_[ci].connect_failures;
                }
                note_error(ci, c.error().describe());
                std::this_thread::sleep_for(backoff);
                backoff = std::min(backoff * 2, milliseconds(400));
                continue;
            }
            conn.emplace(std::move(*c));
            if (connected_once) {
                std::lock_guard lock(mu_);
                ++stats_[ci].reconnects;
            }
            connected_once = true;
        }
        ++seq;
        std::string key = fmt::format("drill:{}:{}:{}", run_id_, ci, seq), value = std::to_string(seq);
        conn->queue({"SET", key, value});
        auto deadline = Clock::now() + reply_timeout_;
        Result<RespReply> r = make_error(Errc::state, "");
        if (auto sent = conn->flush(deadline); sent) r = conn->reply(deadline, &stop_);
        else r = std::move(sent.error());
        if (!r && r.error().code == Errc::state) break; // stopped while waiting: neither acknowledged nor lost
        if (record(ci, std::move(key), std::move(value), r, Clock::now())) {
            backoff = milliseconds(25);
            if (interval_.count() > 0) std::this_thread::sleep_for(interval_);
            continue;
        }
        if (r) continue; // the service answered something else: recorded, the connection goes on
        conn.reset();    // a broken connection: reconnect after a short back-off
        std::this_thread::sleep_for(backoff);
        backoff = std::min(backoff * 2, milliseconds(400));
    }
}

bool DrillClient::record(unsigned ci, std::string key, std::string value, const Result<RespReply>& r, Clock::time_point t) {
    std::lock_guard lock(mu_);
    ConnStats& st = stats_[ci];
    ++st.sent;
    if (r && r->type == '+' && r->text == "OK") {
        ++st.acked;
        st.replied = true;
        acked_[std::move(key)] = std::move(value);
        replies_.push_back(t);
        return true;
    }
    ++st.in_doubt; // sent, never acknowledged: counted neither way
    if (!r) ++st.broken; // the connection is given up (a reply that is not +OK keeps it)
    if (st.errors.size() < 3)
        st.errors.push_back(r ? fmt::format("{:.3f} unexpected reply {}{}", unix_now(), r->type, r->text.substr(0, 60))
                              : fmt::format("{:.3f} {}", unix_now(), r.error().describe()));
    return false;
}

Readback read_back(const replicator::Endpoint& service, const std::map<std::string, std::string>& acked, Clock::time_point deadline) {
    Readback out;
    for (;;) {
        Readback rb;
        auto attempt = [&]() -> Result<void> {
            auto c = US_TRY(RespConn::connect(service, std::min(deadline, Clock::now() + kConnectTimeout)));
            auto it = acked.begin();
            while (it != acked.end()) {
                auto first = it;
                size_t n = 0;
                for (; it != acked.end() && n < kReadbackBatch; ++it, ++n) c.queue({"GET", it->first});
                US_TRYV(c.flush(deadline));
                for (auto k = first; k != it; ++k) {
                    RespReply r = US_TRY(c.reply(deadline));
                    if (r.type == '-') return make_error(Errc::invalid_input, "GET " + k->first + " answered -" + r.text.substr(0, 60));
                    if (r.type != '$') return make_error(Errc::invalid_input, "GET " + k->first + " answered a non-string");
                    if (r.nil || r.text != k->second) {
                        ++(r.nil ? rb.missing : rb.wrong);
                        if (rb.examples.size() < 5) rb.examples.push_back(k->first + (r.nil ? " missing" : " wrong: " + r.text.substr(0, 20)));
                    }
                }
            }
            return {};
        };
        auto r = attempt();
        if (r) return rb;
        out.error = r.error().describe();
        if (Clock::now() + milliseconds(200) >= deadline) return out;
        std::this_thread::sleep_for(milliseconds(200));
    }
}


Result<std::string> ask_selfcheck(const replicator::Endpoint& service, Clock::time_point deadline) {
    auto c = US_TRY(RespConn::connect(service, std::min(deadline, Clock::now() + kConnectTimeout)));
    c.queue({"SELFCHECK"});
    US_TRYV(c.flush(deadline));
    RespReply r = US_TRY(c.reply(deadline));
    return std::string(1, r.type) + r.text;
}

} // namespace understudy::cli
