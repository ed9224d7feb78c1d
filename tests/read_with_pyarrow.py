#!/usr/bin/env python3
"""Decrypt a lethe snapshot file with pyarrow's standard CryptoFactory (no lethe code involved).

usage: read_with_pyarrow.py DEMO_DIR TENANT TABLE
needs: pip install pyarrow cryptography

lethe writes the Parquet key metadata as "key tools" key material (PKMT1, internal storage):
the footer key is the tenant's data key, wrapped with AES-256-GCM under the master key
(nonce(12) || ciphertext || tag, AAD = the master key id). A KmsClient that undoes this wrapping
is all pyarrow needs.
"""
import base64, glob, json, os, sys

import pyarrow.parquet as pq
import pyarrow.parquet.encryption as pe
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

demo, tenant, table = sys.argv[1:4]
master = bytes.fromhex(open(os.path.join(demo, "keys/master.key")).read().strip())


class LetheKms(pe.KmsClient):
    def __init__(self, config):
        super().__init__()

    def wrap_key(self, key_bytes, master_key_identifier):
        raise NotImplementedError("read-only")

    def unwrap_key(self, wrapped_key, master_key_identifier):
        raw = base64.b64decode(wrapped_key)
        return AESGCM(master).decrypt(raw[:12], raw[12:], master_key_identifier.encode())


factory = pe.CryptoFactory(lambda config: LetheKms(config))
decryption = factory.file_decryption_properties(pe.KmsConnectionConfig(), pe.DecryptionConfiguration())
runs = sorted(glob.glob(os.path.join(demo, f"store/snapshots/tenant={tenant}/run=*/_manifest.json")))
manifest = json.load(open(runs[-1]))
for f in manifest["files"]:
    if f["table"] == table:
        t = pq.read_table(os.path.join(demo, "store", f["path"]), decryption_properties=decryption)
        print(f["path"], t.num_rows, "rows")
        print(t.schema)
        print(t.slice(0, 2).to_pylist())
