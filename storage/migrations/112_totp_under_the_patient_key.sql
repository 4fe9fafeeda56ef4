-- A patient's TOTP secret was sealed under the shared 'system:secrets' key, so a dump from
-- before their erasure still opened it with the KEK and the owner-keys directory. New
-- accounts seal it under the patient's own data key, version totp_key_version; NULL marks
-- an account made before this migration, whose secret stays under the system key (it
-- opens the same way; erasure deletes the row, and such old dumps age out with backups).
ALTER TABLE patients ADD COLUMN totp_key_version integer;
