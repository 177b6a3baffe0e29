"""What every stage of jcm-telemetry agrees on.

The reading message and its topics, the store's acknowledgement of what it holds
(``acknowledgement.py``), and the configuration models (sites, devices, register-map
profiles). Gateway, collector, processing and the live view import
these from here and never from each other.

Chain of custody
----------------
For a verifier who trusts none of our servers: each gateway signs every reading message
with its own Ed25519 key and chains it to the previous message of its sequence
(``contract.custody``). The signed bytes are the message up to its ``key`` member,
closed with ``}``; the signature follows in a last ``sig`` member of fixed length, so
the signed bytes are the message without its last 98 bytes, plus ``}``, and are never
re-serialized. ``prev`` is the SHA-256 of the signed bytes of the message before (same
site, gateway and epoch; 64 zeros before seq 1). A site's public keys, with the period
each signs and any revocation, are in its site file (``contract.config.custody``);
``jcm verify`` checks a custody folder of signed messages and keys, and the README's
"Chain of custody" section shows the same check with openssl and sha256sum.
"""
