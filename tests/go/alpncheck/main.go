// Command alpncheck is an independent peer for tpemu's proxy: Go's crypto/tls client (the TLS
// stack Teleport's own clients use) offers ALPN lists and reports what the server negotiated.
//
// Usage: alpncheck ADDR OFFER...   where each OFFER is a comma-separated ALPN list.
// For each OFFER it prints one JSON line: {"offered": [...], "negotiated": "...", "error": "..."}.
// Standard library only, so it builds offline in GOPATH mode.
package main

import (
	"crypto/tls"
	"encoding/json"
	"fmt"
	"net"
	"os"
	"strings"
	"time"
)

type result struct {
	Offered    []string `json:"offered"`
	Negotiated string   `json:"negotiated"`
	Error      string   `json:"error,omitempty"`
}

func try(addr string, offered []string) result {
	r := result{Offered: offered}
	dialer := &net.Dialer{Timeout: 5 * time.Second}
	conn, err := tls.DialWithDialer(dialer, "tcp", addr, &tls.Config{
		// The check is about ALPN, not about trust: tpemu's CA is checked by the other tests.
		InsecureSkipVerify: true, //nolint:gosec
		NextProtos:         offered,
		ServerName:         "proxy.tpemu.test",
	})
	if err != nil {
		r.Error = err.Error()
		return r
	}
	defer conn.Close()
	r.Negotiated = conn.ConnectionState().NegotiatedProtocol
	return r
}

func main() {
	if len(os.Args) < 3 {
		fmt.Fprintln(os.Stderr, "usage: alpncheck ADDR OFFER...")
		os.Exit(2)
	}
	enc := json.NewEncoder(os.Stdout)
	for _, offer := range os.Args[2:] {
		var offered []string
		if offer != "" {
			offered = strings.Split(offer, ",")
		}
		if err := enc.Encode(try(os.Args[1], offered)); err != nil {
			os.Exit(1)
		}
	}
}
