-- One application write: a single-row INSERT into facts, committed on its
-- own (pgbench runs each script in autocommit). The same statement runs in
-- every mode of run.sh; only the triggers on facts differ.
\set amount random(1, 100000)
INSERT INTO facts (article_id, amount, description) VALUES (1, :amount, 'pgbench');
