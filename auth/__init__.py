"""The Auth Service (installed as ``tpemu.auth``): CAs, certificates, tokens, users, backend, API."""
