-- Vectors live apart from chunks, one per chunk and embedding model, so
-- that the library can be embedded again by another model while search
-- goes on with the vectors of the previous one. Every vector names the
-- model that made it, and search reads the vectors of one model only.
-- Existing vectors came from the built-in feature-hashing embedder.
CREATE TABLE chunk_vectors (
    chunk_id BIGINT NOT NULL REFERENCES chunks(id) ON DELETE CASCADE,
    model TEXT NOT NULL,
    vector BYTEA NOT NULL,
    PRIMARY KEY (chunk_id, model)
);
CREATE INDEX chunk_vectors_model ON chunk_vectors(model);
INSERT INTO chunk_vectors (chunk_id, model, vector) SELECT id, 'learntrac-hash-384:1', embedding FROM chunks;
ALTER TABLE chunks DROP COLUMN embedding;

-- The PDF page a section or a passage starts on; NULL for HTML and
-- Markdown. refs lists the positions (in the same book) of the sections
-- a section names, such as "see Section 2.5", separated by spaces.
ALTER TABLE chunks ADD COLUMN page BIGINT;
ALTER TABLE sections ADD COLUMN page BIGINT;
ALTER TABLE sections ADD COLUMN refs TEXT NOT NULL DEFAULT '';

-- Background work on the library: ingesting an uploaded book, or
-- embedding the library again with a new model. state is queued,
-- running, succeeded, failed or cancelled; error says why a job failed.
CREATE TABLE jobs (
    id BIGSERIAL PRIMARY KEY,
    kind TEXT NOT NULL,
    state TEXT NOT NULL,
    file_name TEXT,
    content_hash TEXT,
    model TEXT,
    pages_done BIGINT NOT NULL DEFAULT 0,
    pages_total BIGINT NOT NULL DEFAULT 0,
    passages_done BIGINT NOT NULL DEFAULT 0,
    passages_total BIGINT NOT NULL DEFAULT 0,
    book_id BIGINT REFERENCES books(id) ON DELETE SET NULL,
    error TEXT,
    cancel_requested BIGINT NOT NULL DEFAULT 0,
    created_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX jobs_state ON jobs(state);
