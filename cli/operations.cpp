#include "cli/operations.hpp"

#include <chrono>
#include <deque>
#include <mutex>
#include <thread>

#include "cli/control_socket.hpp"
#include "cli/prometheus.hpp"
#include "cli/status.hpp"
#include "common/log.hpp"
#include "common/json.hpp"
#include "replicator/transport.hpp"   // BitFlip: `understudy drill corrupt-link`

namespace understudy::cli {

namespace po = boost::program_options;

void add_ops_options(po::options_description& d, OpsOptions& o) {
    d.add_options()
        ("control-socket", po::value(&o.control_socket),
         "serve `understudy status` on this UNIX socket (created mode 0600; default: none)")
        ("metrics-listen", po::value(&o.metrics_listen),
         "serve Prometheus /metrics, /healthz and /primary over HTTP on ADDR:PORT (default: none)")
        ("instance-name", po::value(&o.name), "a name for this instance, shown by `status` and in /metrics (default: none)");
}

namespace {
// Declared in this order so that the servers, which read the metrics, go first.
struct Instance {
    Metrics metrics{Role::primary};
    std::mutex mu;
    // Actions wait here for the VM's owner; accepting only while a PrimaryInstance runs.
    std::mutex actions_mu;
    std::deque<std::unique_ptr<ControlAction>> actions;
    bool accepting_actions = false;
    std::shared_ptr<replicator::BitFlip> drill_link; // guarded by mu: the primary's checkpoint stream
    std::unique_ptr<ControlSocket> control;
    std::unique_ptr<HttpEndpoint> http;
    std::string control_path, http_listen;
};
Instance& instance() {
    static Instance i;
    return i;
}
// Longest snapshot path accepted (PATH_MAX, terminating NUL included), and longest
// HOST:PORT (a DNS name of 253 bytes and a port).
constexpr size_t kMaxActionPath = 4095;
constexpr size_t kMaxActionEndpoint = 259;

// Queues a checked action for the VM's owner and waits for its answer.
std::string queue_action(std::unique_ptr<ControlAction> action) {
    Instance& in = instance();
    const std::string cmd = action->cmd;
    auto answer = action->answer.get_future();
    {
        std::lock_guard lock(in.actions_mu);
        if (!in.accepting_actions)
            return ControlSocket::error_json(cmd + ": this instance runs no VM (a backup has none until it promotes)");
        if (!in.actions.empty()) return ControlSocket::error_json(cmd + ": another action is waiting; try again when it is done");
        in.actions.push_back(std::move(action));
    }
    if (answer.wait_for(kActionTimeout) != std::future_status::ready)
        return ControlSocket::error_json(cmd + ": no answer from the VM within " + std::to_string(kActionTimeout.count()) +
                                         " s; it may still complete");
    return answer.get();
}

// Checks {"cmd":CMD,FIELD:"..."} (a string of at most `limit` bytes, without NUL) and
// queues it; the VM's owner checks what only it can (an endpoint's syntax).
std::string request_action(const Json& req, const std::string& cmd, const char* field,
                           size_t limit) {
    const Json* value = req.find(field);
    if (!value || value->kind != Json::Kind::string)
        return ControlSocket::error_json(cmd + ": no \"" + field + "\" string");
    const std::string& v = value->text;
    if (v.empty()) return ControlSocket::error_json(cmd + ": \"" + field + "\" is empty");
    if (v.size() > limit)
        return ControlSocket::error_json(cmd + ": \"" + field + "\" is longer than " + std::to_string(limit) + " bytes");
    if (v.find('\0') != std::string::npos) return ControlSocket::error_json(cmd + ": \"" + field + "\" contains a NUL character");
    if (cmd == "snapshot" && v.front() != '/') return ControlSocket::error_json("snapshot: \"path\" must be an absolute path");
    auto action = std::make_unique<ControlAction>();
    action->cmd = cmd;
    action->target = v;
    return queue_action(std::move(action));
}

// {"cmd":"drill","fault":"corrupt-link"} (`understudy drill`, docs/status.md): flips one
// bit of the next checkpoint-stream bytes this primary sends and answers once they went
// out, or after kDrillFlipWait. Needs no VM thread: the stream's BitFlip is armed here.
constexpr auto kDrillFlipWait = std::chrono::seconds(2);
std::string drill_request(const Metrics& m, const Json& req) {
    const Json* fault = req.find("fault");
    if (!fault || fault->kind != Json::Kind::string)
        return ControlSocket::error_json("drill: no \"fault\" string (the one fault injected from inside: corrupt-link)");
    if (fault->text != "corrupt-link")
        return ControlSocket::error_json("drill: unknown fault '" + fault->text.substr(0, 64) + "' (known: corrupt-link)");
    if (m.role() != Role::primary || m.state() != ProtectionState::protected_)
        return ControlSocket::error_json(std::string("drill: corrupt-link needs a protected primary; this instance is ") +
                                         role_name(m.role()) + ", " + state_name(m.state()));
    std::shared_ptr<replicator::BitFlip> flip;
    {
        std::lock_guard lock(instance().mu);
        flip = instance().drill_link;
    }
    if (!flip) return ControlSocket::error_json("drill: corrupt-link: this primary has no checkpoint stream");
    const uint64_t before = flip->done();
    flip->arm();
    const auto deadline = std::chrono::steady_clock::now() + kDrillFlipWait;
    while (flip->done() == before) {
        if (std::chrono::steady_clock::now() >= deadline) {
            if (flip->disarm())
                return ControlSocket::error_json("drill: the primary sent no checkpoint stream bytes within 2 s; nothing flipped");
            break; // taken just now
        }
        std::this_thread::sleep_for(std::chrono::microseconds(200));
    }
    const double t = std::chrono::duration<double>(std::chrono::system_clock::now().time_since_epoch()).count();
    log::warn("drill: corrupt-link: one bit of the checkpoint stream flipped on its way to the backup");
    JsonWriter w;
    w.begin_object().boolean("ok", true).string("fault", "corrupt-link").number("flipped_unix_s", t).end_object();
    return w.str();
}

// Answers every queued action with `why`; no further ones are accepted.
void stop_accepting_actions(const std::string& why) {
    Instance& in = instance();
    std::lock_guard lock(in.actions_mu);
    in.accepting_actions = false;
    for (auto& a : in.actions) a->answer.set_value(ControlSocket::error_json(a->cmd + ": " + why));
    in.actions.clear();
}

} // namespace

std::unique_ptr<ControlAction> take_control_action() {
    Instance& in = instance();
    std::lock_guard lock(in.actions_mu);
    if (in.actions.empty()) return nullptr;
    auto a = std::move(in.actions.front());
    in.actions.pop_front();
    return a;
}

Metrics& instance_metrics() { return instance().metrics; }

void set_drill_link(std::shared_ptr<replicator::BitFlip> flip) {
    std::lock_guard lock(instance().mu);
    instance().drill_link = std::move(flip);
}

Result<void> start_operations(const OpsOptions& o, Role role) {
    Instance& in = instance();
    std::lock_guard lock(in.mu);
    if (!o.name.empty()) in.metrics.set_name(o.name);
    in.metrics.set_role(role);
    in.metrics.set_state(role == Role::primary ? ProtectionState::starting : ProtectionState::waiting);
    if (!o.control_socket.empty() && !in.control) {
        in.control = US_TRY(ControlSocket::start(
            o.control_socket, [&m = in.metrics](std::string_view line) { return handle_control_request(m, line); }));
        log::info("status: control socket at {}", o.control_socket);
    }
    if (!o.metrics_listen.empty() && !in.http) {
        in.http = US_TRY(HttpEndpoint::start(o.metrics_listen,
                                             [&m = in.metrics](std::string_view target) { return handle_http(m, target); }));
        log::info("metrics: serving /metrics, /healthz and /primary on {} (port {})", o.metrics_listen, in.http->port());
    }
    return {};
}

std::string handle_control_request(const Metrics& m, std::string_view line) {
    auto req = parse_json(line);
    if (!req) return ControlSocket::error_json("malformed request: " + req.error().message);
    if (req->kind != Json::Kind::object) return ControlSocket::error_json("malformed request: not a JSON object");
    const Json* cmd = req->find("cmd");
    if (!cmd || cmd->kind != Json::Kind::string)
        return ControlSocket::error_json("malformed request: no \"cmd\" string (try {\"cmd\":\"status\"})");
    JsonWriter w;
    if (cmd->text == "status") {
        w.begin_object().boolean("ok", true).raw("status", status_to_json(m.snapshot())).end_object();
    } else if (cmd->text == "metrics") {
        w.begin_object().boolean("ok", true).string("metrics", prometheus_text(m)).end_object();
    } else if (cmd->text == "ping") {
        w.begin_object().boolean("ok", true).end_object();
    } else if (cmd->text == "snapshot") {
        return request_action(*req, cmd->text, "path", kMaxActionPath);
    } else if (cmd->text == "reprotect") {
        return request_action(*req, cmd->text, "backup", kMaxActionEndpoint);
    } else if (cmd->text == "failover" || cmd->text == "verify") {
        auto action = std::make_unique<ControlAction>();
        action->cmd = cmd->text;
        return queue_action(std::move(action));
    } else if (cmd->text == "drill") {
        return drill_request(m, *req);
    } else {
        return ControlSocket::error_json("unknown command '" + cmd->text.substr(0, 64) +
                                         "' (known: status, metrics, ping, snapshot, reprotect, failover, verify, drill)");
    }
    return w.str();
}

HttpAnswer handle_http(const Metrics& m, std::string_view target) {
    if (target == "/metrics") return {200, kPrometheusContentType, prometheus_text(m)};
    auto s = m.snapshot();
    std::string what = std::string(role_name(s.role)) + ", " + state_name(s.state) + (s.reason.empty() ? "" : ": " + s.reason);
    if (target == "/healthz") {
        bool ok = s.healthy && s.state != ProtectionState::stopped;
        return {ok ? 200u : 503u, "text/plain; charset=utf-8", (ok ? "ok: " : "unhealthy: ") + what + "\n"};
    }
    if (target == "/primary") {
        bool ok = s.active_primary;
        return {ok ? 200u : 503u, "text/plain; charset=utf-8",
                (ok ? "active primary: " : "not the active primary: ") + what + "\n"};
    }
    if (target == "/")
        return {200, "text/plain; charset=utf-8", "understudy: /metrics (Prometheus), /healthz, /primary\n"};
    return {404, "text/plain; charset=utf-8", "not found: try /metrics, /healthz or /primary\n"};
}

Result<PrimaryInstance> PrimaryInstance::start(const OpsOptions& o, bool protect) {
    US_TRYV(start_operations(o, Role::primary));
    if (!protect) instance_metrics().set_state(ProtectionState::unprotected, "no backup configured");
    {
        std::lock_guard lock(instance().actions_mu);
        instance().accepting_actions = true;
    }
    return PrimaryInstance();
}

PrimaryInstance::~PrimaryInstance() {
    if (!active_) return;
    stop_accepting_actions("the VM stopped");
    instance_metrics().set_state(ProtectionState::stopped, "the VM stopped");
}

void PrimaryInstance::backup_unreachable(const std::string& why) {
    instance_metrics().set_state(ProtectionState::unprotected, "backup unreachable: " + why);
}

} // namespace understudy::cli
