-- The claim statement that inserted a row: a claim retried after its answer was lost adopts exactly the rows
-- its lost attempt inserted, never those of another claim of the same node that were sent since.
ALTER TABLE executions ADD COLUMN claim_token bigint;
