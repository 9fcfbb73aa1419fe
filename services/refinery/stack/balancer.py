"""nginx in front of several gateways (``REFINERY_GATEWAY_REPLICAS`` > 1): one address for
apps, least connections first, and one more try on another gateway when the first cannot
be reached or fails before answering (a gateway that is restarting).

Debian's nginx (``make setup`` unpacks its binary into the cache), with a configuration
written under ``var/nginx`` at each start. Request bodies stay in memory (up to the
gateway's own limit) and answers are not buffered, so streams flow as they come and the
workers write no files.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import httpx

from refinery.common.exceptions import ConfigError
from refinery.common.settings import Settings
from refinery.stack.process import ManagedProcess


def balancer_url(settings: Settings) -> str:
    return f"http://{settings.gateway_host}:{settings.balancer_port}"


def nginx_config(settings: Settings, folder: Path) -> str:
    host, first = settings.gateway_host, settings.gateway_port
    gateways = "\n".join(
        f"    server {host}:{first + i} max_fails=1 fail_timeout=2s;"
        for i in range(settings.gateway_replicas)
    )
    body = max(settings.max_body_bytes, 16 * 1024)
    return f"""# Written by refinery.stack.balancer at each start; edits are lost.
daemon off;
worker_processes 1;
pid {folder}/nginx.pid;
error_log stderr warn;
events {{ worker_connections 4096; }}
http {{
  access_log off;
  client_body_temp_path {folder}/tmp/body;
  proxy_temp_path {folder}/tmp/proxy;
  fastcgi_temp_path {folder}/tmp/fastcgi;
  uwsgi_temp_path {folder}/tmp/uwsgi;
  scgi_temp_path {folder}/tmp/scgi;
  upstream gateways {{
    least_conn;
{gateways}
    keepalive 64;
  }}
  server {{
    listen {settings.gateway_host}:{settings.balancer_port};
    client_max_body_size {body};
    client_body_buffer_size {body};
    location / {{
      proxy_pass http://gateways;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_set_header Host $host;
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_buffering off;
      proxy_read_timeout 300s;
      # A gateway that refuses or drops the connection before its answer: the next one.
      proxy_next_upstream error timeout non_idempotent;
      proxy_next_upstream_tries 2;
    }}
  }}
}}
"""


def _healthy(settings: Settings) -> bool:
    return httpx.get(f"{balancer_url(settings)}/healthz", timeout=2.0).status_code == 200


def _write_config(settings: Settings, folder: Path) -> None:
    (folder / "tmp").mkdir(parents=True, exist_ok=True)
    (folder / "nginx.conf").write_text(nginx_config(settings, folder))


def balancer_process(settings: Settings) -> ManagedProcess:
    folder = (settings.var_dir / "nginx").resolve()
    nginx = settings.nginx_path or shutil.which("nginx") or "/usr/sbin/nginx"
    if not Path(nginx).exists():
        raise ConfigError(f"no nginx at {nginx}; run `make setup` (it fetches Debian's nginx)")
    return ManagedProcess(
        name="balancer",
        # -e: errors to stderr (the log) from the first line, not to a compiled-in path.
        argv=[str(nginx), "-e", "stderr", "-p", str(folder), "-c", str(folder / "nginx.conf")],
        run_dir=settings.run_dir,
        log_dir=settings.log_dir,
        ports={"balancer": settings.balancer_port},
        health=lambda: _healthy(settings),
        prepare=lambda: _write_config(settings, folder),
        startup_timeout_s=30,
    )
