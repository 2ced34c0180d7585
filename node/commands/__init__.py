"""Commands built on the roles: the whole-job demo (demo), a verified model's export with provenance (export), text from a verified model (generate)."""
