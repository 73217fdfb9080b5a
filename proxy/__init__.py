"""The Proxy Service (installed as ``tpemu.proxy``): sniffing, routing, web API, and the proxy ends of
SSH, reverse tunnels and database access. It talks to Auth and agents over the network only."""
