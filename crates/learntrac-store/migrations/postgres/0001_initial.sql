-- Users, the library, learning paths and the wiki. Times are Unix seconds;
-- flags are 0 or 1 so that the same queries run on SQLite and PostgreSQL.

CREATE TABLE users (
    id BIGSERIAL PRIMARY KEY,
    email TEXT NOT NULL UNIQUE,
    name TEXT NOT NULL,
    password_hash TEXT NOT NULL,
    groups TEXT NOT NULL,
    must_change_password BIGINT NOT NULL DEFAULT 0,
    disabled BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE refresh_tokens (
    id BIGSERIAL PRIMARY KEY,
    token_hash TEXT NOT NULL UNIQUE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at BIGINT NOT NULL,
    revoked BIGINT NOT NULL DEFAULT 0,
    created_at BIGINT NOT NULL
);

CREATE TABLE books (
    id BIGSERIAL PRIMARY KEY,
    title TEXT NOT NULL,
    format TEXT NOT NULL,
    source_name TEXT NOT NULL,
    created_by BIGINT REFERENCES users(id) ON DELETE SET NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE sections (
    id BIGSERIAL PRIMARY KEY,
    book_id BIGINT NOT NULL REFERENCES books(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    level BIGINT NOT NULL,
    heading TEXT NOT NULL,
    body TEXT NOT NULL
);
CREATE INDEX sections_book ON sections(book_id, position);

CREATE TABLE chunks (
    id BIGSERIAL PRIMARY KEY,
    book_id BIGINT NOT NULL REFERENCES books(id) ON DELETE CASCADE,
    section_id BIGINT NOT NULL REFERENCES sections(id) ON DELETE CASCADE,
    position BIGINT NOT NULL,
    body TEXT NOT NULL,
    embedding BYTEA NOT NULL
);
CREATE INDEX chunks_section ON chunks(section_id);

CREATE TABLE milestones (
    id BIGSERIAL PRIMARY KEY,
    name TEXT NOT NULL,
    description TEXT NOT NULL,
    created_at BIGINT NOT NULL
);

CREATE TABLE paths (
    id BIGSERIAL PRIMARY KEY,
    owner_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    goal TEXT NOT NULL,
    milestone_id BIGINT NOT NULL REFERENCES milestones(id),
    created_at BIGINT NOT NULL
);
CREATE INDEX paths_owner ON paths(owner_id);

CREATE TABLE tickets (
    id BIGSERIAL PRIMARY KEY,
    path_id BIGINT NOT NULL REFERENCES paths(id) ON DELETE CASCADE,
    owner_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    section_id BIGINT REFERENCES sections(id) ON DELETE SET NULL,
    position BIGINT NOT NULL,
    concept TEXT NOT NULL,
    heading TEXT NOT NULL,
    question TEXT NOT NULL,
    expected_answer TEXT NOT NULL,
    key_terms TEXT NOT NULL,
    difficulty BIGINT NOT NULL,
    status TEXT NOT NULL,
    created_at BIGINT NOT NULL,
    updated_at BIGINT NOT NULL
);
CREATE INDEX tickets_path ON tickets(path_id, position);

CREATE TABLE ticket_prerequisites (
    ticket_id BIGINT NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    prerequisite_id BIGINT NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    PRIMARY KEY (ticket_id, prerequisite_id)
);

CREATE TABLE answers (
    id BIGSERIAL PRIMARY KEY,
    ticket_id BIGINT NOT NULL REFERENCES tickets(id) ON DELETE CASCADE,
    user_id BIGINT NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    body TEXT NOT NULL,
    score DOUBLE PRECISION NOT NULL,
    feedback TEXT NOT NULL,
    suggestions TEXT NOT NULL,
    created_at BIGINT NOT NULL
);
CREATE INDEX answers_ticket ON answers(ticket_id, id);

CREATE TABLE wiki_pages (
    name TEXT PRIMARY KEY,
    body TEXT NOT NULL,
    version BIGINT NOT NULL,
    author_id BIGINT REFERENCES users(id) ON DELETE SET NULL,
    updated_at BIGINT NOT NULL
);
