"""The local adapter-level router: nginx splits one public model name between versioned adapter names.

One vLLM server holds every adapter version under its own immutable name
(`<public>-v<version>`). Clients call the public name; nginx's JavaScript module (njs, Debian's
libnginx-mod-http-js) reads the request's `model`, picks the stable or the canary target by
weight (from nginx's random `$request_id`, so workers need no shared state), rewrites the field
and sends the request on to vLLM. A request that names a versioned adapter directly passes
through unchanged. A target that answers 404 or 5xx is asked once more on the other side while
that side has traffic, so a failing canary costs clients latency, not errors.

vLLM's own /metrics are per server, not per adapter, so the per-version numbers come from the
router: every request is logged with the public name, the target, the target's status and its
latency, and mtail (Debian's log-to-metrics exporter) turns that log into Prometheus series
labelled `model_name` and `target_model_name`, the labels llm-d's endpoint picker uses on the
cluster. The weights and the two target names live in the include file, as NginxRouter keeps
them, so a restarted controller reads them back.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from modelchain.core.io import atomic_write_text
from modelchain.serving.router import _HEADER, NginxRouter, RouterError, check_weights

NJS_MODULE = "/usr/lib/nginx/modules/ngx_http_js_module.so"

# Served name of a registered version; clients never call it, the router and the probe do.
VERSIONED = re.compile(r"^(?P<public>.+)-v(?P<version>\d+)$")


def versioned_name(public: str, version: str | int) -> str:
    return f"{public}-v{version}"


SPLIT_JS = r"""// modelchain: split the public model name between two versioned adapter names by weight.
function pick(r, body) {
    const v = r.variables;
    const requested = body.model || "";
    if (requested !== v.public_model) {
        return {target: requested, fallback: null};  // a versioned name (or another model), asked directly
    }
    const canaryWeight = Number(v.canary_weight);
    // 32 random bits of nginx's request id: a uniform draw without state shared between workers
    const toCanary = parseInt(v.request_id.slice(0, 8), 16) % 100 < canaryWeight;
    const target = toCanary ? v.canary_model : v.stable_model;
    const other = toCanary ? v.stable_model : v.canary_model;
    const otherHasTraffic = toCanary ? canaryWeight < 100 : canaryWeight > 0;
    return {target: target, fallback: otherHasTraffic ? other : null};
}

async function split(r) {
    let body;
    try {
        body = JSON.parse(r.requestText || "{}");
    } catch (e) {
        r.headersOut["Content-Type"] = "application/json";
        r.return(400, JSON.stringify({error: {message: "the request body is not JSON", type: "invalid_request_error"}}));
        return;
    }
    const v = r.variables;
    const picked = pick(r, body);  // njs 0.7 (Debian 12) has no destructuring
    const target = picked.target;
    const fallback = picked.fallback;
    v.model_name = body.model || "-";
    v.target_model = target || "-";
    body.model = target;
    const started = Date.now();
    let reply = await r.subrequest("/_pool" + r.uri, {method: r.method, body: JSON.stringify(body)});
    v.target_status = String(reply.status);
    v.target_time = ((Date.now() - started) / 1000).toFixed(3);
    let servedBy = target;
    if (fallback !== null && (reply.status === 404 || reply.status >= 500)) {
        body.model = fallback;
        reply = await r.subrequest("/_pool" + r.uri, {method: r.method, body: JSON.stringify(body)});
        servedBy = target + ", " + fallback;
    }
    const type = reply.headersOut["Content-Type"];
    if (type) {
        r.headersOut["Content-Type"] = type;
    }
    r.headersOut["X-Served-By"] = servedBy;
    r.return(reply.status, reply.responseText);
}

export default {split};
"""

# mtail program over the router's access log; the line format is LOG_FORMAT's.
ROUTER_MTAIL = r"""# modelchain router: per adapter version request, error and latency series from nginx's access log
counter modelchain_router_request_total by model_name, target_model_name
counter modelchain_router_request_error_total by model_name, target_model_name
histogram modelchain_router_request_duration_seconds by model_name, target_model_name buckets 0.05, 0.1, 0.25, 0.5, 1, 2, 4, 8, 16, 32, 64, 128

/^\d+\.\d+ "(?P<model>[^"]*)" "(?P<target>[^"]*)" (?P<target_status>\d+) (?P<target_s>\d+\.\d+) \d+$/ {
  modelchain_router_request_total[$model][$target]++
  # the error series exists from a target's first request on, so increase() sees its first error
  modelchain_router_request_error_total[$model][$target] += 0
  modelchain_router_request_duration_seconds[$model][$target] = $target_s
  $target_status >= 400 {
    modelchain_router_request_error_total[$model][$target]++
  }
}
"""
LOG_FORMAT = '$msec "$model_name" "$target_model" $target_status $target_time $status'


def render_split_include(public: str, targets: dict[str, str], pool: str, stable: int, canary: int) -> str:
    """The include with the weights and the two targets; its first line is the router header."""
    check_weights(stable, canary)
    header = {"stable": stable, "canary": canary, "targets": targets, "public": public}
    for name in (public, *targets.values()):
        if not re.fullmatch(r"[A-Za-z0-9._:/@+-]+", name):
            raise RouterError(f"model name {name!r}: only letters, digits and ._:/@+- can be routed")
    return "\n".join([
        _HEADER + json.dumps(header, sort_keys=True),
        f'map $host $router_weights {{ default "stable={stable} canary={canary}"; }}',
        f'map $host $public_model {{ default "{public}"; }}',
        f'map $host $stable_model {{ default "{targets["stable"]}"; }}',
        f'map $host $canary_model {{ default "{targets["canary"]}"; }}',
        f'map $host $canary_weight {{ default "{canary}"; }}',
        "upstream modelchain_pool {",
        f"    server {pool} max_fails=0;",
        "    keepalive 16;",
        "}",
        "",
    ])


def render_split_conf(prefix: Path, listen_port: int, include: Path) -> str:
    return f"""# Generated by modelchain (serving/adapter_router.py); edited only by AdapterRouter.
load_module {NJS_MODULE};
worker_processes 1;
daemon on;
pid {prefix}/nginx.pid;
error_log {prefix}/error.log warn;
events {{ worker_connections 512; }}
http {{
    js_path {prefix};
    js_import router from split.js;
    js_var $model_name "-";
    js_var $target_model "-";
    js_var $target_status "0";
    js_var $target_time "0.000";
    log_format split '{LOG_FORMAT}';
    access_log {prefix}/access.log split;
    client_body_temp_path {prefix}/tmp/body;
    proxy_temp_path {prefix}/tmp/proxy;
    fastcgi_temp_path {prefix}/tmp/fastcgi;
    uwsgi_temp_path {prefix}/tmp/uwsgi;
    scgi_temp_path {prefix}/tmp/scgi;
    include {include};
    server {{
        listen 127.0.0.1:{listen_port};
        # njs reads the whole body from one buffer; answers come back whole (no streaming)
        client_body_in_single_buffer on;
        client_body_buffer_size 1m;
        client_max_body_size 1m;
        subrequest_output_buffer_size 8m;
        location = /_router/weights {{
            default_type text/plain;
            access_log off;
            return 200 "$router_weights\\n";
        }}
        location / {{
            js_content router.split;
        }}
        location /_pool/ {{
            internal;
            rewrite ^/_pool(/.*)$ $1 break;
            proxy_pass http://modelchain_pool;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Content-Type application/json;
            proxy_read_timeout 300s;
        }}
    }}
}}
"""


class AdapterRouter(NginxRouter):
    """nginx + njs splitting `public` between the `stable` and `canary` versioned names of one pool."""

    def __init__(self, prefix: str | Path, pool: str, public: str, listen_port: int, targets: dict[str, str],
                 nginx_bin: str = "nginx"):
        prefix = Path(prefix)
        super().__init__(prefix / "nginx.conf", prefix / "split.conf", {"stable": pool, "canary": pool},
                         listen_port, nginx_bin=nginx_bin, prefix=prefix)
        self.pool, self.public = pool, public
        self.targets = dict(targets)

    @property
    def access_log(self) -> Path:
        return self.prefix / "access.log"

    def render_include(self, stable: int, canary: int) -> str:
        return render_split_include(self.public, self.targets, self.pool, stable, canary)

    def render_conf(self) -> str:
        return render_split_conf(self.prefix, self.listen_port, self.upstream_file)

    def write_config(self, stable: int = 100, canary: int = 0) -> None:
        self.prefix.mkdir(parents=True, exist_ok=True)
        atomic_write_text(self.prefix / "split.js", SPLIT_JS)
        self.access_log.touch()  # mtail tails it from the start
        super().write_config(stable, canary)

    def route(self, stable_model: str, canary_model: str, stable: int, canary: int) -> None:
        """Point both sides at versioned names and set the weights, in one reload."""
        previous = dict(self.targets)
        self.targets = {"stable": stable_model, "canary": canary_model}
        try:
            self.set_weights(stable, canary)
        except RouterError:
            self.targets = previous
            raise

    def read_targets(self) -> dict[str, str]:
        """The targets the include file holds (what a restarted controller finds)."""
        targets = self.header().get("targets")
        if not isinstance(targets, dict) or set(targets) != {"stable", "canary"}:
            raise RouterError(f"{self.upstream_file}: the header names no stable and canary targets")
        return {side: str(name) for side, name in targets.items()}

    def describe(self) -> str:
        return (f"nginx + njs {self.conf_path}: {self.public!r} split between {self.targets['stable']!r} (stable) "
                f"and {self.targets['canary']!r} (canary) on {self.pool}, http://127.0.0.1:{self.listen_port}")
