//! An encrypted, authenticated byte stream for backups.
//!
//! Layout: the line `LEARNTRAC-BACKUP 1`, one JSON header line, then
//! blocks of `flag (1 byte) | length (u32, big-endian) | ciphertext`. Each
//! block holds up to 64 KiB under a fresh data key with AES-256-GCM; the
//! data key itself is stored in the header, encrypted under the master key.
//! A block's nonce is a random prefix and its number, and its associated
//! data is the header's SHA-256, the block number and the flag, which is 1
//! on the last block only. So a changed header or byte, reordered or
//! dropped blocks, a cut-off end and data after the end are all detected.

use std::io::{self, BufRead, Read, Write};

use aws_lc_rs::aead::{Aad, LessSafeKey, Nonce};
use base64::Engine;
use base64::engine::general_purpose::STANDARD;
use serde::{Deserialize, Serialize};

use crate::seal::{open, seal};
use crate::{KeyRing, MasterKey, Result, SecretError, random_bytes};

const MAGIC: &[u8] = b"LEARNTRAC-BACKUP 1\n";
const BLOCK: usize = 64 * 1024;
const TAG: usize = 16;
const MAX_HEADER: usize = 4096;
const DATA_KEY_AAD: &[u8] = b"learntrac backup data key";

/// The clear-text header of an encrypted stream.
#[derive(Serialize, Deserialize, Debug, Clone)]
#[serde(deny_unknown_fields)]
pub struct Header {
    /// Id of the master key that encrypted the data key.
    pub master_key_id: String,
    /// Unix seconds.
    pub created_at: i64,
    wrapped_key: String,
    nonce_prefix: String,
}

fn invalid(message: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, message)
}

fn block_nonce(prefix: &[u8; 4], number: u64) -> Nonce {
    let mut nonce = [0u8; 12];
    nonce[..4].copy_from_slice(prefix);
    nonce[4..].copy_from_slice(&number.to_be_bytes());
    Nonce::assume_unique_for_key(nonce)
}

fn block_aad(header_digest: &[u8; 32], number: u64, last: bool) -> [u8; 41] {
    let mut aad = [0u8; 41];
    aad[..32].copy_from_slice(header_digest);
    aad[32..40].copy_from_slice(&number.to_be_bytes());
    aad[40] = u8::from(last);
    aad
}

fn data_key(bytes: &[u8]) -> Result<LessSafeKey> {
    let unbound = aws_lc_rs::aead::UnboundKey::new(&aws_lc_rs::aead::AES_256_GCM, bytes)
        .map_err(|_| SecretError::Crypto("invalid data key"))?;
    Ok(LessSafeKey::new(unbound))
}

/// Encrypts everything written to it; [`Encryptor::finish`] writes the
/// last block and must be called, or the stream reads as truncated.
pub struct Encryptor<W: Write> {
    output: W,
    key: LessSafeKey,
    prefix: [u8; 4],
    header_digest: [u8; 32],
    number: u64,
    buffer: Vec<u8>,
}

impl<W: Write> Encryptor<W> {
    /// Writes the header, with a new data key encrypted under `master`.
    pub fn new(mut output: W, master: &MasterKey, created_at: i64) -> Result<Encryptor<W>> {
        let mut key_bytes = [0u8; 32];
        random_bytes(&mut key_bytes)?;
        let mut prefix = [0u8; 4];
        random_bytes(&mut prefix)?;
        let (nonce, wrapped) = seal(&master.aead()?, DATA_KEY_AAD, &key_bytes)?;
        let header = Header {
            master_key_id: master.id().to_string(),
            created_at,
            wrapped_key: STANDARD.encode([nonce.as_slice(), &wrapped].concat()),
            nonce_prefix: STANDARD.encode(prefix),
        };

        let mut header_bytes = MAGIC.to_vec();
        serde_json::to_writer(&mut header_bytes, &header)
            .map_err(|_| SecretError::Crypto("cannot encode the header"))?;
        header_bytes.push(b'\n');
        output.write_all(&header_bytes).map_err(|_| SecretError::Crypto("cannot write the header"))?;
        Ok(Encryptor {
            output,
            key: data_key(&key_bytes)?,
            prefix,
            header_digest: digest(&header_bytes),
            number: 0,
            buffer: Vec::with_capacity(BLOCK),
        })
    }

    fn write_block(&mut self, plaintext_len: usize, last: bool) -> io::Result<()> {
        let mut block: Vec<u8> = self.buffer.drain(..plaintext_len).collect();
        let aad = block_aad(&self.header_digest, self.number, last);
        self.key
            .seal_in_place_append_tag(block_nonce(&self.prefix, self.number), Aad::from(&aad), &mut block)
            .map_err(|_| io::Error::other("encryption failed"))?;
        self.output.write_all(&[u8::from(last)])?;
        self.output.write_all(&(block.len() as u32).to_be_bytes())?;
        self.output.write_all(&block)?;
        self.number += 1;
        Ok(())
    }

    /// Writes the last block and returns the output.
    pub fn finish(mut self) -> io::Result<W> {
        let remaining = self.buffer.len();
        self.write_block(remaining, true)?;
        self.output.flush()?;
        Ok(self.output)
    }
}

impl<W: Write> Write for Encryptor<W> {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buffer.extend_from_slice(data);
        // A full buffer is kept back until more data arrives, so that the
        // last block is never empty unless the whole stream is.
        while self.buffer.len() > BLOCK {
            self.write_block(BLOCK, false)?;
        }
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        self.output.flush()
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    let mut out = [0u8; 32];
    out.copy_from_slice(digest.as_ref());
    out
}

/// Reads and checks the header of an encrypted stream without decrypting.
pub fn read_header<R: BufRead>(input: &mut R) -> io::Result<(Header, Vec<u8>)> {
    let mut magic = vec![0u8; MAGIC.len()];
    input
        .read_exact(&mut magic)
        .map_err(|_| invalid("LT-BACKUP-FORMAT: the file is too short to be a LearnTrac backup".into()))?;
    if magic != MAGIC {
        return Err(invalid("LT-BACKUP-FORMAT: the file is not a LearnTrac backup (format 1)".into()));
    }
    let mut line = Vec::new();
    input.take(MAX_HEADER as u64).read_until(b'\n', &mut line)?;
    if line.last() != Some(&b'\n') {
        return Err(invalid("LT-BACKUP-FORMAT: the backup header is cut off or too long".into()));
    }
    let header: Header = serde_json::from_slice(&line)
        .map_err(|error| invalid(format!("LT-BACKUP-FORMAT: the backup header is invalid: {error}")))?;
    let mut header_bytes = magic;
    header_bytes.extend_from_slice(&line);
    Ok((header, header_bytes))
}

/// Decrypts and authenticates a stream block by block. A read fails with
/// [`io::ErrorKind::InvalidData`] on the first block that does not
/// authenticate, and at the end when the last block is missing or data
/// follows it.
pub struct Decryptor<R: Read> {
    input: R,
    key: LessSafeKey,
    prefix: [u8; 4],
    header_digest: [u8; 32],
    number: u64,
    plaintext: Vec<u8>,
    position: usize,
    finished: bool,
}

impl<R: BufRead> Decryptor<R> {
    /// Reads the header and unwraps the data key with the matching key of
    /// `keys`.
    pub fn new(mut input: R, keys: &KeyRing) -> Result<(Header, Decryptor<R>)> {
        let (header, header_bytes) = read_header(&mut input).map_err(|e| SecretError::Stream(e.to_string()))?;
        let master = keys.find(&header.master_key_id, "the backup")?;
        let corrupt = || SecretError::Stream("LT-BACKUP-TAMPERED: the backup's data key does not decrypt".into());
        let wrapped = STANDARD.decode(&header.wrapped_key).map_err(|_| corrupt())?;
        if wrapped.len() < 12 {
            return Err(corrupt());
        }
        let key_bytes = open(&master.aead()?, &wrapped[..12], DATA_KEY_AAD, &wrapped[12..]).ok_or_else(corrupt)?;
        let prefix: [u8; 4] =
            STANDARD.decode(&header.nonce_prefix).ok().and_then(|p| p.try_into().ok()).ok_or_else(corrupt)?;
        let decryptor = Decryptor {
            input,
            key: data_key(&key_bytes)?,
            prefix,
            header_digest: digest(&header_bytes),
            number: 0,
            plaintext: Vec::new(),
            position: 0,
            finished: false,
        };
        Ok((header, decryptor))
    }
}

impl<R: Read> Decryptor<R> {
    fn read_block(&mut self) -> io::Result<()> {
        let truncated =
            || invalid("LT-BACKUP-TRUNCATED: the backup ends before its last block; the file is incomplete".into());
        let mut flag = [0u8; 1];
        if self.input.read(&mut flag)? == 0 {
            return Err(truncated());
        }
        let last = match flag[0] {
            0 => false,
            1 => true,
            _ => return Err(self.tampered()),
        };
        let mut length = [0u8; 4];
        self.input.read_exact(&mut length).map_err(|_| truncated())?;
        let length = u32::from_be_bytes(length) as usize;
        if !(TAG..=BLOCK + TAG).contains(&length) {
            return Err(self.tampered());
        }
        let mut block = vec![0u8; length];
        self.input.read_exact(&mut block).map_err(|_| truncated())?;

        let aad = block_aad(&self.header_digest, self.number, last);
        let nonce = block_nonce(&self.prefix, self.number);
        let plaintext_len = match self.key.open_in_place(nonce, Aad::from(&aad), &mut block) {
            Ok(plaintext) => plaintext.len(),
            Err(_) => return Err(self.tampered()),
        };
        block.truncate(plaintext_len);
        self.plaintext = block;
        self.position = 0;
        self.number += 1;
        if last {
            self.finished = true;
            let mut extra = [0u8; 1];
            if self.input.read(&mut extra)? != 0 {
                return Err(invalid("LT-BACKUP-TAMPERED: data follows the backup's last block".into()));
            }
        }
        Ok(())
    }

    fn tampered(&self) -> io::Error {
        invalid(format!(
            "LT-BACKUP-TAMPERED: block {} of the backup does not authenticate; the file was changed or damaged",
            self.number
        ))
    }
}

impl<R: Read> Read for Decryptor<R> {
    fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
        while self.position == self.plaintext.len() {
            if self.finished {
                return Ok(0);
            }
            self.read_block()?;
        }
        let count = out.len().min(self.plaintext.len() - self.position);
        out[..count].copy_from_slice(&self.plaintext[self.position..self.position + count]);
        self.position += count;
        Ok(count)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{KeySource, SecretString};

    fn ring(key: &MasterKey) -> KeyRing {
        KeyRing::single(key.clone(), KeySource::Environment(SecretString(String::new())))
    }

    fn encrypt(key: &MasterKey, data: &[u8]) -> Vec<u8> {
        let mut encryptor = Encryptor::new(Vec::new(), key, 42).expect("encryptor");
        // Several writes of odd sizes cross block boundaries.
        for piece in data.chunks(10_007) {
            encryptor.write_all(piece).expect("write");
        }
        encryptor.finish().expect("finish")
    }

    fn decrypt(key: &MasterKey, file: &[u8]) -> io::Result<Vec<u8>> {
        let (header, mut decryptor) = Decryptor::new(io::Cursor::new(file), &ring(key))
            .map_err(|error| io::Error::new(io::ErrorKind::InvalidData, error.to_string()))?;
        assert_eq!(header.created_at, 42);
        let mut out = Vec::new();
        decryptor.read_to_end(&mut out)?;
        Ok(out)
    }

    fn sample() -> Vec<u8> {
        (0..200_000u32).flat_map(|i| (i % 251).to_le_bytes()).collect()
    }

    #[test]
    fn round_trip_of_several_blocks() {
        let key = MasterKey::generate().expect("key");
        let data = sample();
        assert_eq!(decrypt(&key, &encrypt(&key, &data)).expect("decrypt"), data);
        assert_eq!(decrypt(&key, &encrypt(&key, b"")).expect("empty"), b"");
        let exact = vec![7u8; BLOCK];
        assert_eq!(decrypt(&key, &encrypt(&key, &exact)).expect("one full block"), exact);
    }

    #[test]
    fn any_changed_byte_is_detected() {
        let key = MasterKey::generate().expect("key");
        let file = encrypt(&key, &sample());
        for position in [0, 5, MAGIC.len() + 3, file.len() / 2, file.len() - 1] {
            let mut changed = file.clone();
            changed[position] ^= 0x01;
            assert!(decrypt(&key, &changed).is_err(), "byte {position} changed unnoticed");
        }
    }

    #[test]
    fn truncation_and_appended_data_are_detected() {
        let key = MasterKey::generate().expect("key");
        let file = encrypt(&key, &sample());
        let error = decrypt(&key, &file[..file.len() - 100]).expect_err("cut inside the last block");
        assert!(error.to_string().contains("LT-BACKUP-TRUNCATED"), "{error}");

        let mut appended = file.clone();
        appended.push(0);
        assert!(decrypt(&key, &appended).is_err());
    }

    #[test]
    fn dropped_block_is_detected() {
        let key = MasterKey::generate().expect("key");
        let file = encrypt(&key, &sample());
        let (_, header_bytes) = read_header(&mut io::Cursor::new(&file)).expect("header");
        let first_block = 1 + 4 + BLOCK + TAG;
        let mut dropped = file[..header_bytes.len()].to_vec();
        dropped.extend_from_slice(&file[header_bytes.len() + first_block..]);
        assert!(decrypt(&key, &dropped).is_err());
    }

    #[test]
    fn wrong_master_key_is_named() {
        let key = MasterKey::generate().expect("key");
        let file = encrypt(&key, b"data");
        let other = MasterKey::generate().expect("other key");
        let error = decrypt(&other, &file).expect_err("wrong key");
        assert!(error.to_string().contains("LT-MASTER-KEY-WRONG"), "{error}");
    }
}
