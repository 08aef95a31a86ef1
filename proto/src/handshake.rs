use super::{need, Codec, Decoded, ProtoError, SOCKS_VERSION};

/// An authentication method code (RFC 1928 section 3).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Method(pub u8);

impl Method {
    pub const NO_AUTH: Method = Method(0x00);
    pub const GSSAPI: Method = Method(0x01);
    pub const USER_PASS: Method = Method(0x02);
    pub const NO_ACCEPTABLE: Method = Method(0xFF);
}

/// The set of methods a client offers. A bit set, so membership is one
/// lookup and duplicates in the greeting collapse.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MethodSet([u64; 4]);

impl MethodSet {
    pub fn insert(&mut self, m: Method) {
        self.0[(m.0 >> 6) as usize] |= 1 << (m.0 & 63);
    }
    pub fn contains(&self, m: Method) -> bool {
        self.0[(m.0 >> 6) as usize] & (1 << (m.0 & 63)) != 0
    }
    pub fn len(&self) -> usize {
        self.0.iter().map(|w| w.count_ones() as usize).sum()
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
    pub fn iter(&self) -> impl Iterator<Item = Method> + '_ {
        (0..=255u8).map(Method).filter(|m| self.contains(*m))
    }
}

impl FromIterator<Method> for MethodSet {
    fn from_iter<I: IntoIterator<Item = Method>>(iter: I) -> Self {
        let mut set = MethodSet::default();
        for m in iter {
            set.insert(m);
        }
        set
    }
}

/// Client greeting: VER, NMETHODS, METHODS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Greeting {
    pub methods: MethodSet,
    /// The same methods in the client's order (each at its first
    /// occurrence): a server with several acceptable methods takes the
    /// first the client lists.
    pub offered: Vec<Method>,
}

impl Greeting {
    pub fn new(methods: &[Method]) -> Greeting {
        let mut set = MethodSet::default();
        let mut offered = Vec::with_capacity(methods.len());
        for &m in methods {
            if !set.contains(m) {
                set.insert(m);
                offered.push(m);
            }
        }
        Greeting {
            methods: set,
            offered,
        }
    }

    /// The first method the client lists that `acceptable` holds.
    pub fn first_of(&self, acceptable: &[Method]) -> Option<Method> {
        self.offered
            .iter()
            .copied()
            .find(|m| acceptable.contains(m))
    }
}

impl Codec for Greeting {
    fn decode(buf: &[u8]) -> Result<Decoded<Greeting>, ProtoError> {
        need!(buf, 2);
        if buf[0] != SOCKS_VERSION {
            return Err(ProtoError::UnsupportedVersion(buf[0]));
        }
        let n = buf[1] as usize;
        if n == 0 {
            return Err(ProtoError::NoMethods);
        }
        need!(buf, 2 + n);
        let methods: Vec<Method> = buf[2..2 + n].iter().map(|&b| Method(b)).collect();
        Ok(Decoded::Complete(Greeting::new(&methods), 2 + n))
    }

    /// Encodes the greeting. An empty set encodes NMETHODS = 0, which a
    /// server rejects; tests use that on purpose. NMETHODS is one byte, so a
    /// set of all 256 codes is cut to its lowest 255: that drops 0xFF (NO
    /// ACCEPTABLE METHODS), which is not a method a client can offer.
    fn encode(&self, out: &mut Vec<u8>) {
        let n = self.offered.len().min(255);
        out.push(SOCKS_VERSION);
        out.push(n as u8);
        out.extend(self.offered.iter().take(n).map(|m| m.0));
    }
}

/// Server's METHOD selection message: VER, METHOD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MethodSelection(pub Method);

impl MethodSelection {
    pub const LEN: usize = 2;
}

impl Codec for MethodSelection {
    fn encode(&self, out: &mut Vec<u8>) {
        out.extend_from_slice(&[SOCKS_VERSION, (self.0).0]);
    }

    fn decode(buf: &[u8]) -> Result<Decoded<MethodSelection>, ProtoError> {
        need!(buf, 2);
        if buf[0] != SOCKS_VERSION {
            return Err(ProtoError::UnsupportedVersion(buf[0]));
        }
        Ok(Decoded::Complete(MethodSelection(Method(buf[1])), 2))
    }
}
