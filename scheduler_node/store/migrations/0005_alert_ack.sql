-- Acknowledged alerts (POST /v1/alerts/{id}/ack): who acknowledged one and when. An acknowledged alert is
-- still delivered to its webhook; the flag is for people's lists.
ALTER TABLE alerts ADD COLUMN acked_at timestamptz, ADD COLUMN acked_by text;
