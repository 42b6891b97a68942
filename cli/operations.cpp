#include "cli/operations.hpp"

#include <spdlog/spdlog.h>

#include <mutex>

#include "cli/control_socket.hpp"
#include "cli/prometheus.hpp"
#include "cli/status.hpp"
#include "failover/etcd_arbiter.hpp" // the strict JSON reader

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
    std::unique_ptr<ControlSocket> control;
    std::unique_ptr<HttpEndpoint> http;
    std::string control_path, http_listen;
};
Instance& instance() {
    static Instance i;
    return i;
}
} // namespace

Metrics& instance_metrics() { return instance().metrics; }

Result<void> start_operations(const OpsOptions& o, Role role) {
    Instance& in = instance();
    std::lock_guard lock(in.mu);
    if (!o.name.empty()) in.metrics.set_name(o.name);
    in.metrics.set_role(role);
    in.metrics.set_state(role == Role::primary ? ProtectionState::starting : ProtectionState::waiting);
    if (!o.control_socket.empty() && !in.control) {
        in.control = US_TRY(ControlSocket::start(
            o.control_socket, [&m = in.metrics](std::string_view line) { return handle_control_request(m, line); }));
        spdlog::info("status: control socket at {}", o.control_socket);
    }
    if (!o.metrics_listen.empty() && !in.http) {
        in.http = US_TRY(HttpEndpoint::start(o.metrics_listen,
                                             [&m = in.metrics](std::string_view target) { return handle_http(m, target); }));
        spdlog::info("metrics: serving /metrics, /healthz and /primary on {} (port {})", o.metrics_listen, in.http->port());
    }
    return {};
}

std::string handle_control_request(const Metrics& m, std::string_view line) {
    using failover::etcd_detail::Json;
    auto req = failover::etcd_detail::parse_json(line);
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
    } else {
        return ControlSocket::error_json("unknown command '" + cmd->text.substr(0, 64) +
                                         "' (known: status, metrics, ping)");
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
    return PrimaryInstance();
}

PrimaryInstance::~PrimaryInstance() {
    if (active_) instance_metrics().set_state(ProtectionState::stopped, "the VM stopped");
}

void PrimaryInstance::backup_unreachable(const std::string& why) {
    instance_metrics().set_state(ProtectionState::unprotected, "backup unreachable: " + why);
}

} // namespace understudy::cli
