// Command teleagent is an independent Teleport reverse-tunnel agent for testing tpemu's proxy.
//
// It is written against Teleport's wire contract with the libraries Teleport's own agent uses —
// crypto/tls and golang.org/x/crypto/ssh — and nothing from tpemu:
//
//   - joins with a token through the web API (POST /webapi/host/credentials, Teleport's
//     RegisterUsingTokenRequest / proto.Certs JSON), as lib/auth/join's web fallback does;
//   - dials the proxy's web port with ALPN [teleport-reversetunnelv2 teleport-reversetunnel]
//     (lib/reversetunnel/agent_dialer.go) and runs SSH as the client, authenticating with
//     publickey auth presenting its host certificate (agent.go: ssh.PublicKeys(signer));
//   - opens a teleport-heartbeat channel and sends "ping" requests (agent.go sendFirstHeartbeat,
//     handleDrainChannels), answers x-teleport-version, accepts teleport-discovery channels;
//   - accepts teleport-transport channels: one space on stderr, then the teleport-transport-dial
//     request (sshutils.DialReq JSON); "@local-node" is served by an SSH node server running on
//     the channel (transport.go: LocalNode → server.HandleConnection); refusals go to stderr;
//   - announces itself as a node to the Auth Service through the proxy with ALPN
//     teleport-auth@<hex(cluster)>.teleport.cluster.local (api/client ConfigureALPN).
//
// With -probe it instead sends one kind of bad input on an authenticated tunnel (or a forged
// certificate) and prints what the proxy answered. Every event is one JSON line on stdout.
package main

import (
	"bytes"
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"encoding/hex"
	"encoding/json"
	"encoding/pem"
	"errors"
	"flag"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"time"

	"golang.org/x/crypto/ssh"
)

const (
	chanHeartbeat = "teleport-heartbeat"
	chanTransport = "teleport-transport"
	chanDiscovery = "teleport-discovery"
	reqDial       = "teleport-transport-dial"
	reqVersion    = "x-teleport-version"
	localNode     = "@local-node"
	remoteAuth    = "@remote-auth-server"
	version       = "17.0.0"
)

var (
	out   = json.NewEncoder(os.Stdout)
	outMu sync.Mutex
)

func emit(event string, fields map[string]interface{}) {
	outMu.Lock()
	defer outMu.Unlock()
	if fields == nil {
		fields = map[string]interface{}{}
	}
	fields["event"] = event
	_ = out.Encode(fields)
}

func fatal(what string, err error) {
	emit("fatal", map[string]interface{}{"what": what, "error": err.Error()})
	os.Exit(1)
}

type registerRequest struct {
	Token        string `json:"token"`
	HostID       string `json:"hostID"`
	NodeName     string `json:"node_name"`
	Role         string `json:"role"`
	PublicTLSKey []byte `json:"public_tls_key"`
	PublicSSHKey []byte `json:"public_ssh_key"`
}

type certs struct {
	SSH        []byte   `json:"ssh"`
	TLS        []byte   `json:"tls"`
	TLSCACerts [][]byte `json:"tls_ca_certs"`
	SSHCACerts [][]byte `json:"ssh_ca_certs"`
}

type dialReq struct {
	Address       string `json:"address,omitempty"`
	ServerID      string `json:"server_id,omitempty"`
	ConnType      string `json:"conn_type"`
	ClientSrcAddr string `json:"client_src_addr,omitempty"`
	ClientDstAddr string `json:"client_dst_addr,omitempty"`
}

type agent struct {
	proxy, cluster, hostname, hostID string
	heartbeat                        time.Duration
	key                              *ecdsa.PrivateKey
	keyPEM                           []byte
	caPool                           *x509.CertPool
	certs                            certs
	hostCert                         *ssh.Certificate
	signer                           ssh.Signer
	hostCAs                          []ssh.PublicKey
	userCA                           ssh.PublicKey
}

func newUUID() string {
	b := make([]byte, 16)
	_, _ = rand.Read(b)
	b[6] = (b[6] & 0x0f) | 0x40
	b[8] = (b[8] & 0x3f) | 0x80
	return fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:])
}

func (a *agent) webClient() *http.Client {
	return &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: a.caPool, NextProtos: []string{"http/1.1"}}}}
}

// join posts RegisterUsingTokenRequest to /webapi/host/credentials.
func (a *agent) join(token string) error {
	der, err := x509.MarshalPKIXPublicKey(&a.key.PublicKey)
	if err != nil {
		return err
	}
	sshPub, err := ssh.NewPublicKey(&a.key.PublicKey)
	if err != nil {
		return err
	}
	body, _ := json.Marshal(registerRequest{
		Token: token, HostID: a.hostID, NodeName: a.hostname, Role: "Node",
		PublicTLSKey: pem.EncodeToMemory(&pem.Block{Type: "PUBLIC KEY", Bytes: der}),
		PublicSSHKey: ssh.MarshalAuthorizedKey(sshPub),
	})
	resp, err := a.webClient().Post("https://"+a.proxy+"/webapi/host/credentials", "application/json", bytes.NewReader(body))
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	if resp.StatusCode != http.StatusOK {
		return fmt.Errorf("join: HTTP %d: %s", resp.StatusCode, data)
	}
	if err := json.Unmarshal(data, &a.certs); err != nil {
		return err
	}
	pub, _, _, _, err := ssh.ParseAuthorizedKey(a.certs.SSH)
	if err != nil {
		return fmt.Errorf("host certificate: %w", err)
	}
	cert, ok := pub.(*ssh.Certificate)
	if !ok || cert.CertType != ssh.HostCert {
		return errors.New("the join answer's ssh field is not a host certificate")
	}
	a.hostCert = cert
	base, err := ssh.NewSignerFromKey(a.key)
	if err != nil {
		return err
	}
	if a.signer, err = ssh.NewCertSigner(cert, base); err != nil {
		return err
	}
	for _, line := range a.certs.SSHCACerts {
		k, _, _, _, err := ssh.ParseAuthorizedKey(line)
		if err != nil {
			return fmt.Errorf("host CA: %w", err)
		}
		a.hostCAs = append(a.hostCAs, k)
	}
	for _, ca := range a.certs.TLSCACerts {
		a.caPool.AppendCertsFromPEM(ca)
	}
	emit("joined", map[string]interface{}{"host_id": a.hostID, "principals": cert.ValidPrincipals,
		"role": cert.Permissions.Extensions["x-teleport-role"]})
	return nil
}

// fetchUserCA reads the user CA the node trusts, from the web API's export.
func (a *agent) fetchUserCA() error {
	resp, err := a.webClient().Get("https://" + a.proxy + "/webapi/auth/export?type=user")
	if err != nil {
		return err
	}
	defer resp.Body.Close()
	data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
	k, _, _, _, err := ssh.ParseAuthorizedKey(data)
	if err != nil {
		return fmt.Errorf("user CA export: %w (%q)", err, data)
	}
	a.userCA = k
	return nil
}

func (a *agent) checkProxy(_ string, _ net.Addr, key ssh.PublicKey) error {
	cert, ok := key.(*ssh.Certificate)
	if !ok || cert.CertType != ssh.HostCert {
		return errors.New("expected a host certificate from the proxy")
	}
	for _, ca := range a.hostCAs {
		if bytes.Equal(ca.Marshal(), cert.SignatureKey.Marshal()) {
			return nil
		}
	}
	return errors.New("no matching keys found when checking server's host signature")
}

// dialTunnel: TLS with the reverse-tunnel ALPN names, then SSH with the host certificate.
func (a *agent) dialTunnel(signer ssh.Signer) (ssh.Conn, <-chan ssh.NewChannel, <-chan *ssh.Request, string, error) {
	raw, err := net.DialTimeout("tcp", a.proxy, 15*time.Second)
	if err != nil {
		return nil, nil, nil, "", err
	}
	host, _, _ := net.SplitHostPort(a.proxy)
	tconn := tls.Client(raw, &tls.Config{RootCAs: a.caPool, ServerName: host,
		NextProtos: []string{"teleport-reversetunnelv2", "teleport-reversetunnel"}})
	if err := tconn.Handshake(); err != nil {
		raw.Close()
		return nil, nil, nil, "", err
	}
	negotiated := tconn.ConnectionState().NegotiatedProtocol
	conn, chans, reqs, err := ssh.NewClientConn(tconn, a.proxy, &ssh.ClientConfig{
		User: a.hostID + "." + a.cluster, Auth: []ssh.AuthMethod{ssh.PublicKeys(signer)},
		HostKeyCallback: a.checkProxy, ClientVersion: "SSH-2.0-Teleport", Timeout: 15 * time.Second,
	})
	if err != nil {
		tconn.Close()
		return nil, nil, nil, negotiated, err
	}
	return conn, chans, reqs, negotiated, nil
}

func handleGlobal(reqs <-chan *ssh.Request) {
	for r := range reqs {
		if r.Type == reqVersion {
			_ = r.Reply(true, []byte(version))
			emit("version-asked", nil)
			continue
		}
		_ = r.Reply(false, nil) // keep-alives, as OpenSSH does
	}
}

func (a *agent) handleChannels(conn ssh.Conn, chans <-chan ssh.NewChannel) {
	for nch := range chans {
		switch nch.ChannelType() {
		case chanTransport:
			go a.handleTransport(conn, nch)
		case chanDiscovery:
			ch, reqs, err := nch.Accept()
			if err != nil {
				continue
			}
			go func() {
				defer ch.Close()
				for r := range reqs {
					var body struct {
						Proxies []struct {
							Metadata struct {
								Name string `json:"name"`
							} `json:"metadata"`
						} `json:"proxies"`
					}
					names := []string{}
					if err := json.Unmarshal(r.Payload, &body); err == nil {
						for _, p := range body.Proxies {
							names = append(names, p.Metadata.Name)
						}
					}
					emit("discovery", map[string]interface{}{"request": r.Type, "proxies": names})
					_ = r.Reply(false, nil)
				}
			}()
		default:
			_ = nch.Reject(ssh.UnknownChannelType, "unknown channel type: "+nch.ChannelType())
		}
	}
}

// handleTransport follows lib/reversetunnel/transport.go (*transport).start.
func (a *agent) handleTransport(conn ssh.Conn, nch ssh.NewChannel) {
	ch, reqs, err := nch.Accept()
	if err != nil {
		return
	}
	defer ch.Close()
	fmt.Fprint(ch.Stderr(), " ")
	var req *ssh.Request
	select {
	case req = <-reqs:
		if req == nil {
			return
		}
	case <-time.After(30 * time.Second):
		return
	}
	if req.Type != reqDial {
		_ = req.Reply(false, nil)
		return
	}
	var d dialReq
	if err := json.Unmarshal(req.Payload, &d); err != nil {
		d = dialReq{Address: string(req.Payload)} // parseDialReq: the legacy raw address
	}
	if d.ConnType == "" {
		d.ConnType = "node"
	}
	fqdn := a.hostID + "." + a.cluster
	emit("dial", map[string]interface{}{"address": d.Address, "server_id": d.ServerID, "conn_type": d.ConnType,
		"client_src_addr": d.ClientSrcAddr})
	if d.ConnType != "node" || (d.Address != localNode && d.ServerID != fqdn) {
		msg := fmt.Sprintf("connection rejected: this Go agent serves only %s node (asked for %s %q)", fqdn, d.ConnType, d.Address)
		fmt.Fprint(ch.Stderr(), msg)
		_ = req.Reply(false, []byte(msg))
		return
	}
	_ = req.Reply(true, []byte("Connected."))
	go ssh.DiscardRequests(reqs)
	a.serveNode(&chConn{Channel: ch, remote: addrOf(d.ClientSrcAddr)})
}

type chConn struct {
	ssh.Channel
	remote net.Addr
}

func (c *chConn) LocalAddr() net.Addr                { return &net.TCPAddr{} }
func (c *chConn) RemoteAddr() net.Addr               { return c.remote }
func (c *chConn) SetDeadline(_ time.Time) error      { return nil }
func (c *chConn) SetReadDeadline(_ time.Time) error  { return nil }
func (c *chConn) SetWriteDeadline(_ time.Time) error { return nil }

func addrOf(s string) net.Addr {
	if a, err := net.ResolveTCPAddr("tcp", s); err == nil {
		return a
	}
	return &net.TCPAddr{}
}

// serveNode runs an SSH server for one user connection: user certificates signed by the user CA,
// the host certificate as host key; "exec" answers with a line naming this agent.
func (a *agent) serveNode(nc net.Conn) {
	checker := &ssh.CertChecker{IsUserAuthority: func(k ssh.PublicKey) bool {
		return a.userCA != nil && bytes.Equal(k.Marshal(), a.userCA.Marshal())
	}}
	cfg := &ssh.ServerConfig{PublicKeyCallback: checker.Authenticate, ServerVersion: "SSH-2.0-Teleport"}
	cfg.AddHostKey(a.signer)
	sconn, chans, reqs, err := ssh.NewServerConn(nc, cfg)
	if err != nil {
		emit("node-auth-failed", map[string]interface{}{"error": err.Error()})
		return
	}
	defer sconn.Close()
	go ssh.DiscardRequests(reqs)
	for nch := range chans {
		if nch.ChannelType() != "session" {
			_ = nch.Reject(ssh.UnknownChannelType, "only sessions")
			continue
		}
		ch, creqs, err := nch.Accept()
		if err != nil {
			continue
		}
		go func() {
			defer ch.Close()
			for r := range creqs {
				switch r.Type {
				case "exec", "shell":
					var cmd struct{ Command string }
					if r.Type == "exec" {
						_ = ssh.Unmarshal(r.Payload, &cmd)
					}
					_ = r.Reply(true, nil)
					emit("served", map[string]interface{}{"user": sconn.User(), "command": cmd.Command})
					fmt.Fprintf(ch, "go-agent %s as %s: %s\n", a.hostname, sconn.User(), cmd.Command)
					_, _ = ch.SendRequest("exit-status", false, ssh.Marshal(struct{ Status uint32 }{0}))
					return
				default:
					_ = r.Reply(r.Type == "pty-req" || r.Type == "env", nil)
				}
			}
		}()
	}
}

// announce upserts this node in the Auth Service through the proxy (ALPN teleport-auth@<route>).
func (a *agent) announce(ttl time.Duration) (int, error) {
	route := hex.EncodeToString([]byte(a.cluster)) + ".teleport.cluster.local"
	pair, err := tls.X509KeyPair(pemCert(a.certs.TLS), a.keyPEM)
	if err != nil {
		return 0, err
	}
	client := &http.Client{Timeout: 15 * time.Second, Transport: &http.Transport{
		TLSClientConfig: &tls.Config{RootCAs: a.caPool, ServerName: route, Certificates: []tls.Certificate{pair},
			NextProtos: []string{"teleport-auth@" + route, "http/1.1"}},
		ForceAttemptHTTP2: false,
	}}
	body, _ := json.Marshal(map[string]interface{}{
		"kind": "node", "version": "v2", "ttl": ttl.Nanoseconds(),
		"metadata": map[string]interface{}{"name": a.hostID, "labels": map[string]string{"agent": "go"}},
		"spec":     map[string]interface{}{"hostname": a.hostname, "addr": "", "use_tunnel": true, "version": version},
	})
	req, _ := http.NewRequest("POST", "https://"+a.proxy+"/v1/nodes", bytes.NewReader(body))
	req.Header.Set("Content-Type", "application/json")
	req.Header.Set("version", version)
	resp, err := client.Do(req)
	if err != nil {
		return 0, err
	}
	defer resp.Body.Close()
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 1<<20))
	return resp.StatusCode, nil
}

func pemCert(b []byte) []byte {
	if bytes.Contains(b, []byte("-----BEGIN")) {
		return b
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: b})
}

func (a *agent) run() {
	conn, chans, reqs, negotiated, err := a.dialTunnel(a.signer)
	if err != nil {
		fatal("tunnel", err)
	}
	emit("tunnel", map[string]interface{}{"alpn": negotiated, "server_version": string(conn.ServerVersion())})
	go handleGlobal(reqs)
	go a.handleChannels(conn, chans)
	hb, hbReqs, err := conn.OpenChannel(chanHeartbeat, nil)
	if err != nil {
		fatal("heartbeat channel", err)
	}
	go ssh.DiscardRequests(hbReqs)
	if _, err := hb.SendRequest("ping", false, nil); err != nil {
		fatal("first ping", err)
	}
	announce := func() {
		status, err := a.announce(3 * a.heartbeat)
		fields := map[string]interface{}{"status": status}
		if err != nil {
			fields["error"] = err.Error()
		}
		emit("presence", fields)
	}
	announce()
	ticker := time.NewTicker(a.heartbeat)
	defer ticker.Stop()
	done := make(chan error, 1)
	go func() { done <- conn.Wait() }()
	for {
		select {
		case <-ticker.C:
			stamp, _ := time.Now().UTC().MarshalText()
			if _, err := hb.SendRequest("ping", false, stamp); err != nil {
				fatal("ping", err)
			}
			announce()
		case err := <-done:
			fatal("tunnel closed", err)
		}
	}
}

// probe sends one kind of bad input and reports the proxy's answer.
func (a *agent) probe(mode string) {
	signer := a.signer
	if mode == "forged" {
		// The same principals and extensions, signed by a CA this cluster never issued.
		caKey, _ := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
		caSigner, _ := ssh.NewSignerFromKey(caKey)
		forged := *a.hostCert
		forged.Nonce, forged.Signature, forged.SignatureKey = nil, nil, nil
		if err := forged.SignCert(rand.Reader, caSigner); err != nil {
			fatal("forge", err)
		}
		base, _ := ssh.NewSignerFromKey(a.key)
		signer, _ = ssh.NewCertSigner(&forged, base)
	}
	if mode == "plainkey" {
		signer, _ = ssh.NewSignerFromKey(a.key)
	}
	conn, _, _, negotiated, err := a.dialTunnel(signer)
	if err != nil {
		emit("probe", map[string]interface{}{"probe": mode, "alpn": negotiated, "error": err.Error()})
		return
	}
	defer conn.Close()
	result := map[string]interface{}{"probe": mode, "alpn": negotiated}
	switch mode {
	case "session", "x11", "direct-tcpip", "bogus-type":
		_, _, err := conn.OpenChannel(mode, nil)
		if err != nil {
			result["error"] = err.Error()
		}
	case "dial-garbage", "dial-oversized", "dial-remote-auth", "dial-wrong-request":
		ch, _, err := conn.OpenChannel(chanTransport, nil)
		if err != nil {
			result["error"] = err.Error()
			break
		}
		payload := []byte{0xff, 0xfe, 0x00, 0x7b}
		name := reqDial
		switch mode {
		case "dial-oversized":
			payload = []byte(`{"address":"@remote-auth-server","server_id":"` + strings.Repeat("x", 80*1024) + `"}`)
		case "dial-remote-auth":
			payload = []byte(`{"address":"@remote-auth-server"}`)
		case "dial-wrong-request":
			name = "exec"
		}
		ok, err := ch.SendRequest(name, true, payload)
		result["ok"] = ok
		if err != nil {
			result["error"] = err.Error()
		}
		if ok && mode == "dial-remote-auth" {
			// The channel now reaches the Auth Service: speak TLS with our host identity to it.
			route := hex.EncodeToString([]byte(a.cluster)) + ".teleport.cluster.local"
			pair, _ := tls.X509KeyPair(pemCert(a.certs.TLS), a.keyPEM)
			t := tls.Client(&chConn{Channel: ch}, &tls.Config{RootCAs: a.caPool, ServerName: route,
				Certificates: []tls.Certificate{pair}, NextProtos: []string{"http/1.1"}})
			if err := t.Handshake(); err != nil {
				result["auth_error"] = err.Error()
				break
			}
			fmt.Fprintf(t, "GET /v1/ping HTTP/1.1\r\nHost: auth\r\nConnection: close\r\n\r\n")
			line := make([]byte, 12)
			_, _ = io.ReadFull(t, line)
			result["auth_status_line"] = string(line)
			break
		}
		_ = ch.CloseWrite()
		stderr, _ := io.ReadAll(io.LimitReader(ch.Stderr(), 64*1024))
		result["stderr"] = strings.TrimSpace(string(stderr))
	}
	emit("probe", result)
}

func main() {
	proxy := flag.String("proxy", "", "proxy web address host:port")
	token := flag.String("token", "", "join token")
	caFile := flag.String("ca", "", "the cluster's CA (PEM) to trust the proxy with")
	cluster := flag.String("cluster", "", "cluster name")
	hostname := flag.String("hostname", "go-agent", "node name")
	heartbeat := flag.Duration("heartbeat", 5*time.Minute, "keep_alive_interval")
	probeMode := flag.String("probe", "", "send one kind of bad input instead of serving")
	flag.Parse()
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		fatal("key", err)
	}
	der, _ := x509.MarshalECPrivateKey(key)
	a := &agent{proxy: *proxy, cluster: *cluster, hostname: *hostname, hostID: newUUID(), heartbeat: *heartbeat,
		key: key, keyPEM: pem.EncodeToMemory(&pem.Block{Type: "EC PRIVATE KEY", Bytes: der}), caPool: x509.NewCertPool()}
	caPEM, err := os.ReadFile(*caFile)
	if err != nil {
		fatal("ca", err)
	}
	a.caPool.AppendCertsFromPEM(caPEM)
	if err := a.join(*token); err != nil {
		fatal("join", err)
	}
	if *probeMode != "" {
		a.probe(*probeMode)
		return
	}
	if err := a.fetchUserCA(); err != nil {
		fatal("user CA", err)
	}
	a.run()
}
