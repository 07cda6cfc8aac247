-- The egress policy's allowed networks (protocol/egress.py): target addresses in these networks may be reached
-- although private, loopback or link-local. One cluster-wide setting, so every node and API replica agree;
-- set by `shardwheel migrate --allow-target-net CIDR`.
ALTER TABLE cluster ADD COLUMN allowed_target_nets cidr[] NOT NULL DEFAULT '{}';
