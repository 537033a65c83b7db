# Config writers the shell benchmarks share (sourced; they need `$dir`, the run's temp dir).

# nginx_conf NAME BODY: $dir/NAME.conf, one worker in the foreground, BODY inside `http {}`.
nginx_conf() {
    mkdir -p "$dir/$1-tmp"
    cat >"$dir/$1.conf" <<EOF
worker_processes 1;
daemon off;
user root;
pid $dir/$1.pid;
error_log $dir/$1-error.log error;
events { worker_connections 4096; }
http {
  access_log off;
  keepalive_requests 10000000;
  client_body_temp_path $dir/$1-tmp; proxy_temp_path $dir/$1-tmp; fastcgi_temp_path $dir/$1-tmp;
  uwsgi_temp_path $dir/$1-tmp; scgi_temp_path $dir/$1-tmp;
  $2
}
EOF
}

# haproxy_conf FILE BIND ORIGIN: one thread, HTTP mode, connections to ORIGIN always reused;
# BIND is what follows `bind` (the address, and options such as `proto h2`).
haproxy_conf() {
    cat >"$1" <<EOF
global
  nbthread 1
  maxconn 8000
defaults
  mode http
  timeout connect 5s
  timeout client 30s
  timeout server 30s
  http-reuse always
frontend f
  bind $2
  default_backend b
backend b
  server o $3
EOF
}
