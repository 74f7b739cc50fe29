use super::*;

fn seq_secret(first: u8) -> [u8; 32] {
    std::array::from_fn(|i| first + i as u8)
}

/// PROTOCOL.md §7.7.
#[test]
fn protocol_spec_vector() {
    let client = seq_secret(0x01);
    let server = seq_secret(0x21);
    assert_eq!(
        public_key_b64(client),
        "B6N8vBQgk8i3VdwbEOhstCY3StFqqFPtC9/AsrhtHHw="
    );
    let hs = server_handshake_with(&public_key_b64(client), server, "abcdefghijklmnop").unwrap();
    assert_eq!(
        hs.server_key,
        "WGmv9FBUlzLLqu1eXfmzCm2jHLDldCutWtShp2jxpns="
    );
    assert_eq!(hs.cipher.key(), b"8e65549ac3e59ba4");
    let c = hs.cipher;
    let wire = c.encrypt_b64(br#"{"type":1,"content":"hello"}"#);
    assert_eq!(wire, "osCCSwLzwq49FmcOr6wm5Eq4gRt1+XlTSgMpSihyz+E=");
    assert_eq!(
        c.send_msg_key(1, "m1", "u2", 1, wire.as_bytes()),
        "b525c8119e390dcd2ac25dc926576999"
    );
    assert_eq!(
        c.recv_msg_key(
            123_456_789,
            7,
            "m1",
            1_700_000_000,
            "u1",
            "u1",
            1,
            wire.as_bytes()
        ),
        "e052cd992b342b8a75e54c3f53f561cc"
    );
    // The client derives the same cipher from its side.
    let client_side = SessionCipher::derive(client, &hs.server_key, &hs.salt).unwrap();
    assert_eq!(client_side, c);
}

#[test]
fn decrypt_inverts_encrypt_and_rejects_garbage() {
    let c = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
    for plain in [&b""[..], b"x", b"exactly sixteen!", &[7u8; 1000]] {
        assert_eq!(
            c.decrypt_b64(c.encrypt_b64(plain).as_bytes()).unwrap(),
            plain
        );
    }
    assert_eq!(c.decrypt_b64(b"not base64!"), Err(CryptoError::BadBase64));
    assert_eq!(c.decrypt_b64(b"AAAA"), Err(CryptoError::BadCiphertext));
}

#[test]
fn a_sealed_recv_opens_and_a_tampered_one_does_not() {
    let c = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
    let mut recv = crate::RecvPacket {
        from_uid: "u1".into(),
        channel_id: "u1".into(),
        channel_type: 1,
        message_id: 42,
        message_seq: 7,
        ..Default::default()
    };
    let (wire, key) = c.seal_recv(&recv, b"plain");
    recv.payload = bytes::Bytes::from(wire.into_bytes());
    recv.msg_key = key;
    assert_eq!(c.open_recv(&recv).unwrap(), b"plain");
    recv.channel_id = "u2".into();
    assert_eq!(c.open_recv(&recv), Err(CryptoError::MsgKeyMismatch));
}

#[test]
fn opening_in_reused_buffers_matches_sealing_and_refuses_what_was_not_sealed() {
    let c = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
    let (mut seal, mut open) = (SealScratch::default(), SealScratch::default());
    let recv = crate::RecvPacket {
        from_uid: "u1".into(),
        channel_id: "g1".into(),
        channel_type: 2,
        message_id: 42,
        message_seq: 7,
        ..Default::default()
    };
    let head = recv.head();
    // Long then short, so a buffer grown by one message holds stale bytes for the next.
    for len in [1000, 0, 15, 16, 17, 100] {
        let plain = vec![b'x' ^ len as u8; len];
        let (wire, key) = c.seal_recv_into(&head, &plain, &mut seal);
        let (wire, key) = (wire.to_vec(), key);
        assert_eq!(
            c.open_recv_into(&head, &wire, &key, &mut open),
            Ok(&plain[..])
        );
        let mut bad = key;
        bad[31] ^= 1;
        assert_eq!(
            c.open_recv_into(&head, &wire, &bad, &mut open),
            Err(CryptoError::MsgKeyMismatch)
        );
        assert_eq!(
            c.open_recv_into(&head, &wire, &key[..31], &mut open),
            Err(CryptoError::MsgKeyMismatch)
        );
    }
    // A msgKey that matches what was sent but a payload that is not base64, or whose
    // padding is wrong, is refused as such rather than read.
    let not_b64 = b"not base64!";
    let key = c.msg_key_for_recv_test(&head, not_b64);
    assert_eq!(
        c.open_recv_into(&head, not_b64, &key, &mut open),
        Err(CryptoError::BadBase64)
    );
    // Bad padding, a length that is not whole blocks, no ciphertext at all.
    for ct in [&[7u8; 16][..], &[0u8; 17][..], &[][..]] {
        let wire = BASE64.encode(ct);
        let key = c.msg_key_for_recv_test(&head, wire.as_bytes());
        assert_eq!(
            c.open_recv_into(&head, wire.as_bytes(), &key, &mut open),
            Err(CryptoError::BadCiphertext),
            "{} bytes of ciphertext",
            ct.len()
        );
    }
}

impl SessionCipher {
    /// The spec path's RECV msgKey over `head` and any `wire` bytes.
    fn msg_key_for_recv_test(&self, head: &crate::RecvHead<'_>, wire: &[u8]) -> Vec<u8> {
        self.recv_msg_key(
            head.message_id,
            head.message_seq,
            head.client_msg_no,
            head.timestamp,
            head.from_uid,
            head.channel_id,
            head.channel_type,
            wire,
        )
        .into_bytes()
    }
}

#[test]
fn bad_client_keys_are_refused() {
    let s = seq_secret(1);
    assert_eq!(
        server_handshake_with("", s, "abcdefghijklmnop").unwrap_err(),
        CryptoError::EmptyClientKey
    );
    assert_eq!(
        server_handshake_with("***", s, "abcdefghijklmnop").unwrap_err(),
        CryptoError::BadClientKey
    );
    assert_eq!(
        server_handshake_with("AAAA", s, "abcdefghijklmnop").unwrap_err(),
        CryptoError::BadClientKey
    );
    // The fresh-key path refuses the same keys.
    for (key, err) in [
        ("", CryptoError::EmptyClientKey),
        ("***", CryptoError::BadClientKey),
        ("AAAA", CryptoError::BadClientKey),
    ] {
        assert_eq!(server_handshake(key).unwrap_err(), err, "{key:?}");
    }
}

#[test]
fn client_keys_of_low_order_are_refused() {
    // Points whose shared secret is all zeros whatever the server's key (RFC 7748
    // §6.1): anyone could compute the session key.
    let order8: [u8; 32] = [
        0xe0, 0xeb, 0x7a, 0x7c, 0x3b, 0x41, 0xb8, 0xae, 0x16, 0x56, 0xe3, 0xfa, 0xf1, 0x9f, 0xc4,
        0x6a, 0xda, 0x09, 0x8d, 0xeb, 0x9c, 0x32, 0xb1, 0xfd, 0x86, 0x62, 0x05, 0x16, 0x5f, 0x49,
        0xb8, 0x00,
    ];
    let mut one = [0u8; 32];
    one[0] = 1;
    for low in [[0u8; 32], one, order8] {
        assert_eq!(
            server_handshake(&BASE64.encode(low)).unwrap_err(),
            CryptoError::BadClientKey,
            "{low:?}"
        );
    }
}

#[test]
fn a_fresh_server_handshake_agrees_with_the_client_side() {
    let mut server_keys = std::collections::HashSet::new();
    for first in [1u8, 50, 200] {
        let client = seq_secret(first);
        let hs = server_handshake(&public_key_b64(client)).unwrap();
        assert_eq!(hs.salt.len(), 16);
        assert_eq!(BASE64.decode(&hs.server_key).unwrap().len(), 32);
        // What an SDK does with the CONNACK: the same cipher on its side.
        let client_side = SessionCipher::derive(client, &hs.server_key, &hs.salt).unwrap();
        assert_eq!(client_side, hs.cipher);
        server_keys.insert(hs.server_key);
    }
    assert_eq!(server_keys.len(), 3, "a fresh key pair per handshake");
}

#[test]
fn sealing_in_reused_buffers_matches_the_spec_path_whatever_came_before() {
    let cipher = SessionCipher::from_parts(*b"0123456789abcdef", *b"abcdefghijklmnop");
    let mut scratch = SealScratch::default();
    // Sizes up and down, so stale bytes of a longer earlier call would show.
    for (i, len) in [300usize, 0, 15, 16, 17, 100, 1, 4000, 33]
        .into_iter()
        .enumerate()
    {
        let recv = crate::RecvPacket {
            from_uid: format!("u{i}"),
            channel_id: if i % 2 == 0 {
                "g".into()
            } else {
                "a-much-longer-channel".into()
            },
            channel_type: [2, 255, 1][i % 3],
            client_msg_no: format!("{i:032x}"),
            message_id: if i == 3 { i64::MIN } else { -5 + i as i64 },
            message_seq: u32::MAX - i as u32,
            timestamp: i32::MIN + i as i32,
            ..Default::default()
        };
        let plain = vec![b'a' + i as u8; len];
        let wire = cipher.encrypt_b64(&plain);
        let key = cipher.recv_msg_key(
            recv.message_id,
            recv.message_seq,
            &recv.client_msg_no,
            recv.timestamp,
            &recv.from_uid,
            &recv.channel_id,
            recv.channel_type,
            wire.as_bytes(),
        );
        let (sealed, sealed_key) = cipher.seal_recv_into(&recv.head(), &plain, &mut scratch);
        assert_eq!(sealed, wire.as_bytes(), "payload, case {i}");
        assert_eq!(&sealed_key[..], key.as_bytes(), "msgKey, case {i}");
    }
    scratch.trim();
    let (sealed, _) = cipher.seal_recv_into(
        &crate::RecvPacket::default().head(),
        b"after a trim",
        &mut scratch,
    );
    assert_eq!(sealed, cipher.encrypt_b64(b"after a trim").as_bytes());
}

#[test]
fn salts_are_sixteen_alphanumerics() {
    let salt = random_salt().unwrap();
    assert_eq!(salt.len(), 16);
    assert!(salt.bytes().all(|b| b.is_ascii_alphanumeric()));
    assert_ne!(salt, random_salt().unwrap());
}
