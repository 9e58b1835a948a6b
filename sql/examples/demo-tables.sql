-- Example tables for `gateway demo` and for docker-compose.yml when it runs
-- without the app: a small version of the app's tables (see the README's
-- protocol section). Safe to run again: nothing is created twice, and the
-- articles are seeded only into an empty table. The default GATEWAY_TRACK,
-- facts:budget_fact,articles:article, tracks them.
CREATE TABLE IF NOT EXISTS articles (
    id        serial PRIMARY KEY,
    name      varchar(255) NOT NULL,
    type      varchar(20) NOT NULL DEFAULT 'expense',
    is_active boolean NOT NULL DEFAULT true
);

CREATE TABLE IF NOT EXISTS facts (
    id                  serial PRIMARY KEY,
    article_id          int NOT NULL,
    financial_center_id int,
    cost_center_id      int,
    amount              bigint NOT NULL CHECK (amount >= 0),
    fact_date           date NOT NULL DEFAULT current_date,
    description         text,
    record_type         varchar(10) NOT NULL DEFAULT 'fact',
    transfer_id         bigint
);

INSERT INTO articles (name, type)
SELECT name, type
FROM (VALUES ('Groceries', 'expense'), ('Rent', 'expense'), ('Salary', 'income'),
             ('Transport', 'expense'), ('Cafe', 'expense')) AS a(name, type)
WHERE NOT EXISTS (SELECT 1 FROM articles);
