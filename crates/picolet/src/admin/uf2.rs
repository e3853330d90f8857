//! UF2, the RP2040 bootrom's drag-and-drop format (<https://github.com/microsoft/uf2>): 512-byte
//! blocks, each carrying 256 bytes for one flash address. A UF2 may cover any part of flash; the
//! bootrom writes just those pages, so a one-sector UF2 changes one sector and nothing else.
//!
//! Written here because writing it is twenty lines; the crates for it convert whole ELFs.

/// The RP2040's UF2 family ID.
pub const RP2040_FAMILY: u32 = 0xe48b_ff56;
const MAGIC_START0: u32 = 0x0a32_4655;
const MAGIC_START1: u32 = 0x9e5d_5157;
const MAGIC_END: u32 = 0x0ab1_6f30;
const FLAG_FAMILY_ID: u32 = 0x0000_2000;
const PAYLOAD: usize = 256;
const XIP_BASE: u32 = 0x1000_0000;

/// A UF2 image writing `data` (padded to whole 256-byte pages with 0xFF, as erased flash) at
/// `flash_offset`.
pub fn image(flash_offset: u32, data: &[u8]) -> Vec<u8> {
    let pages: Vec<&[u8]> = data.chunks(PAYLOAD).collect();
    let mut out = Vec::with_capacity(pages.len() * 512);
    for (i, page) in pages.iter().enumerate() {
        let mut block = [0u8; 512];
        let words = [
            MAGIC_START0,
            MAGIC_START1,
            FLAG_FAMILY_ID,
            XIP_BASE + flash_offset + (i * PAYLOAD) as u32,
            PAYLOAD as u32,
            i as u32,
            pages.len() as u32,
            RP2040_FAMILY,
        ];
        for (w, chunk) in words.iter().zip(block.chunks_mut(4)) {
            chunk.copy_from_slice(&w.to_le_bytes());
        }
        block[32..32 + PAYLOAD].fill(0xff);
        block[32..32 + page.len()].copy_from_slice(page);
        block[508..].copy_from_slice(&MAGIC_END.to_le_bytes());
        out.extend_from_slice(&block);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn word(b: &[u8], at: usize) -> u32 {
        u32::from_le_bytes(b[at..at + 4].try_into().unwrap())
    }

    #[test]
    fn blocks_carry_consecutive_pages_for_the_rp2040() {
        let data: Vec<u8> = (0..600u32).map(|i| i as u8).collect();
        let img = image(0x1f_f000, &data);
        assert_eq!(img.len(), 3 * 512);
        for (i, block) in img.chunks(512).enumerate() {
            assert_eq!(word(block, 0), MAGIC_START0);
            assert_eq!(word(block, 4), MAGIC_START1);
            assert_eq!(word(block, 12), 0x101f_f000 + 256 * i as u32);
            assert_eq!(word(block, 16), 256);
            assert_eq!((word(block, 20), word(block, 24)), (i as u32, 3));
            assert_eq!(word(block, 28), RP2040_FAMILY);
            assert_eq!(word(block, 508), MAGIC_END);
        }
        assert_eq!(&img[512 * 2 + 32..512 * 2 + 32 + 88], &data[512..]);
        assert!(
            img[512 * 2 + 32 + 88..512 * 2 + 32 + 256]
                .iter()
                .all(|&b| b == 0xff)
        );
    }
}
