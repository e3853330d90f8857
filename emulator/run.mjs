// Runs a picolet firmware ELF on an emulated RP2040 (rp2040js 1.4.1) and bridges its UART0 to a
// loopback TCP port, the way QEMU's `-serial tcp::PORT,server` does: `picolet link` connects there
// and speaks PPP with the firmware.
//
//   node emulator/run.mjs --elf firmware/out/picolet-serial.elf [--uart-port 0]
//        [--flash-uf2 board-config.uf2]... [--trace-uart]
//
// --flash-uf2 writes a UF2 image into flash before boot, as the bootrom would (for instance the
// board configuration sector written by `picolet board-config`).
//
// Protocol (one JSON object per line): events and replies on stdout, commands on stdin.
//   -> {"event":"listening","uartPort":N}          once the UART port is open
//   <- {"cmd":"read","symbol":"NAME","len":N}       -> {"reply":"read","hex":"..","nanos":T}
//   <- {"cmd":"region"}                             -> {"reply":"region","hex":"..","nanos":T}
//        (the 1 KB memory region, found through the PICOLET_MEMORY_REGION_ADDR word)
//   <- {"cmd":"deepest"}                            -> the deepest stack point and its callers
//   <- {"cmd":"edges","pin":N}                      -> {"reply":"edges","edges":[{high,nanos}…]}
//        (the last 64 level changes of an output pin, for the LED patterns)
//   <- {"cmd":"stats"}                              -> {"reply":"stats", ...figures}
//        (among them maskedMaxNanos: the longest time interrupts were masked, and where)
//   <- {"cmd":"exit"}                               stops the emulator and exits
// Firmware trouble (watchdog reset, undefined instruction) is an {"event":"fault"} and exit 3.
//
// rp2040js lacks or gets wrong a few things the firmware uses; each is shimmed below, in the
// harness, never in the firmware (see `shim*` functions and the README's emulator section).

import { randomInt } from 'node:crypto';
import { readFileSync } from 'node:fs';
import net from 'node:net';
import readline from 'node:readline';
import { RP2040 } from 'rp2040js';

const FLASH_START = 0x10000000;
const SRAM_START = 0x20000000;
const NANOS_PER_CYCLE = 8; // clk_sys = 125 MHz
const STACK_PAINT = 0xcccc_cccc; // cortex_m_rt::STACK_PAINT_VALUE = picolet_device::stack::PAINT

function parseArgs(argv) {
  const args = { elf: null, uartPort: 0, traceUart: false, uf2: [] };
  for (let i = 2; i < argv.length; i++) {
    const value = argv[i + 1];
    if (argv[i] === '--elf' && value) {
      args.elf = value;
      i++;
    } else if (argv[i] === '--flash-uf2' && value) {
      args.uf2.push(value);
      i++;
    } else if (argv[i] === '--trace-uart') {
      args.traceUart = true;
    } else if (argv[i] === '--uart-port' && value) {
      args.uartPort = Number(value);
      i++;
    } else {
      throw new Error(`unknown argument ${argv[i]}`);
    }
  }
  if (!args.elf) throw new Error('usage: run.mjs --elf FILE [--uart-port N]');
  return args;
}

/** The loadable segments and the symbol table of a 32-bit little-endian ARM ELF. */
function readElf(bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  if (v.getUint32(0, false) !== 0x7f454c46 || bytes[4] !== 1 || bytes[5] !== 1) {
    throw new Error('not a 32-bit little-endian ELF');
  }
  const phoff = v.getUint32(28, true);
  const shoff = v.getUint32(32, true);
  const phentsize = v.getUint16(42, true);
  const phnum = v.getUint16(44, true);
  const shentsize = v.getUint16(46, true);
  const shnum = v.getUint16(48, true);
  const segments = [];
  for (let i = 0; i < phnum; i++) {
    const o = phoff + i * phentsize;
    if (v.getUint32(o, true) !== 1) continue; // PT_LOAD
    const offset = v.getUint32(o + 4, true);
    const paddr = v.getUint32(o + 12, true);
    const filesz = v.getUint32(o + 16, true);
    if (filesz > 0) segments.push({ paddr, data: bytes.subarray(offset, offset + filesz) });
  }
  const symbols = new Map();
  for (let i = 0; i < shnum; i++) {
    const o = shoff + i * shentsize;
    if (v.getUint32(o + 4, true) !== 2) continue; // SHT_SYMTAB
    const symOff = v.getUint32(o + 16, true);
    const symSize = v.getUint32(o + 20, true);
    const strtab = shoff + v.getUint32(o + 24, true) * shentsize;
    const strOff = v.getUint32(strtab + 16, true);
    for (let s = symOff; s < symOff + symSize; s += 16) {
      let end = strOff + v.getUint32(s, true);
      const start = end;
      while (bytes[end] !== 0) end++;
      const name = new TextDecoder().decode(bytes.subarray(start, end));
      if (name) symbols.set(name, { addr: v.getUint32(s + 4, true), size: v.getUint32(s + 8, true) });
    }
  }
  return { segments, symbols };
}

/** Writes each 256-byte block of an RP2040 UF2 to its flash address, as the bootrom does. */
function loadUf2(mcu, bytes) {
  const v = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  for (let o = 0; o + 512 <= bytes.length; o += 512) {
    const ok = v.getUint32(o, true) === 0x0a324655 && v.getUint32(o + 4, true) === 0x9e5d5157;
    const family = (v.getUint32(o + 8, true) & 0x2000) === 0 || v.getUint32(o + 28, true) === 0xe48bff56;
    if (!ok || !family || v.getUint32(o + 508, true) !== 0x0ab16f30) throw new Error(`bad UF2 block at ${o}`);
    const addr = v.getUint32(o + 12, true);
    const size = v.getUint32(o + 16, true);
    if (addr < FLASH_START || addr + size > FLASH_START + 0x200000 || size > 476) {
      throw new Error(`UF2 block outside the 2 MiB flash: 0x${addr.toString(16)}`);
    }
    mcu.flash.set(bytes.subarray(o + 32, o + 32 + size), addr - FLASH_START);
  }
}

/** rp2040js logs every SEV and throws on errors; keep warnings quiet and make SEV a wake-up. */
function shimLogger(mcu, faults) {
  mcu.logger = {
    debug() {},
    info(_component, message) {
      // SEV is decoded but ignored by rp2040js; Embassy's executor pends work with it, so a task
      // woken from thread mode would sleep until the next interrupt without this.
      if (message === 'SEV') mcu.core.eventRegistered = true;
    },
    warn() {},
    error(component, message) {
      faults.push(`${component}: ${message}`);
    },
  };
}

/** ROSC is not emulated (reads return all ones): give RANDOMBIT real randomness, STATUS stable. */
function shimRosc(mcu) {
  const regs = new Map();
  mcu.peripherals[0x40060] = {
    readUint32(offset) {
      if (offset === 0x1c) return randomInt(2); // RANDOMBIT
      if (offset === 0x18) return 0x8000_1000; // STATUS: STABLE | ENABLED
      return regs.get(offset) ?? 0;
    },
    writeUint32Atomic(offset, value) {
      regs.set(offset, value);
    },
  };
}

/**
 * UART0: the TX interrupt must fire once the firmware has written data (its FIFO then drains at
 * once), not forever; the DMA control register must read back what was written.
 */
function shimUart(uart) {
  const UARTDR = 0x0;
  const UARTDMACR = 0x48;
  const TXINTR = 1 << 5;
  let dmacr = 0;
  let txPending = false;
  uart.checkInterrupts = function () {
    if (txPending) {
      this.interruptStatus |= TXINTR;
      txPending = false;
    }
    this.rp2040.setInterrupt(this.irq, !!(this.interruptStatus & this.interruptMask));
  };
  const read = uart.readUint32.bind(uart);
  uart.readUint32 = (offset) => (offset === UARTDMACR ? dmacr : read(offset));
  const write = uart.writeUint32.bind(uart);
  uart.writeUint32 = (offset, value) => {
    if (offset === UARTDMACR) {
      dmacr = value;
      return;
    }
    write(offset, value);
    if (offset === UARTDR) {
      txPending = true;
      uart.checkInterrupts();
    }
  };
}

function main() {
  const args = parseArgs(process.argv);
  const elf = readElf(readFileSync(args.elf));
  const mcu = new RP2040();
  const faults = [];
  shimLogger(mcu, faults);
  shimRosc(mcu);
  const uart = mcu.uart[0];
  shimUart(uart);
  for (const { paddr, data } of elf.segments) {
    if (paddr >= FLASH_START && paddr + data.length <= FLASH_START + mcu.flash.length) {
      mcu.flash.set(data, paddr - FLASH_START);
    }
  }
  for (const file of args.uf2) loadUf2(mcu, readFileSync(file));
  // Level changes of the output pins (the LED's patterns), with their emulated time.
  const edges = new Map();
  for (const pin of mcu.gpio) {
    pin.addListener((state) => {
      if (state !== 0 && state !== 1) return;
      const list = edges.get(pin.index) ?? [];
      list.push({ high: state === 1, nanos: mcu.clock.nanos });
      if (list.length > 64) list.shift();
      edges.set(pin.index, list);
    });
  }
  // No bootrom ships on any registry: start in boot2 at the top of flash, as rp2040js's demos do.
  mcu.core.PC = FLASH_START;
  mcu.core.SP = 0x20042000;
  mcu.core.LR = 0;

  const emit = (obj) => process.stdout.write(`${JSON.stringify(obj)}\n`);
  const fail = (why) => {
    emit({ event: 'fault', why, nanos: mcu.clock.nanos });
    process.exit(3);
  };
  mcu.onBreak = (code) => fail(`breakpoint or undefined instruction (code ${code}) at 0x${mcu.core.PC.toString(16)}`);
  mcu.peripherals[0x40058].onWatchdogTrigger = () => fail('watchdog reset');

  // UART0 <-> one TCP client at a time. Bytes from the host wait here until the RX FIFO (32
  // bytes, which drops on overflow) has room.
  let client = null;
  const rxQueue = [];
  let txBytes = 0;
  let rxBytes = 0;
  uart.onByte = (b) => {
    txBytes++;
    if (args.traceUart) process.stderr.write(`tx ${b.toString(16).padStart(2, '0')}\n`);
    if (client) client.write(Buffer.of(b));
  };
  const server = net.createServer((socket) => {
    if (client) client.destroy();
    client = socket;
    socket.setNoDelay(true);
    socket.on('data', (data) => {
      for (const b of data) rxQueue.push(b);
    });
    socket.on('close', () => {
      if (client === socket) client = null;
    });
    socket.on('error', () => {});
  });
  server.listen(args.uartPort, '127.0.0.1', () => emit({ event: 'listening', uartPort: server.address().port }));

  const symbol = (name) => {
    const s = elf.symbols.get(name);
    if (!s) throw new Error(`no symbol ${name} in ${args.elf}`);
    return s;
  };
  /** The function symbol covering an address, for fault reports. */
  const functionAt = (addr) => {
    for (const [name, s] of elf.symbols) {
      const start = s.addr & ~1;
      if (addr >= start && addr < start + s.size) return name;
    }
    return '?';
  };
  const stackBottom = symbol('_stack_end').addr;
  const stackTop = symbol('_stack_start').addr;
  const stackHighWater = () => {
    let addr = stackBottom;
    while (addr < stackTop && mcu.readUint32(addr) === STACK_PAINT) addr += 4;
    return stackTop - addr;
  };

  // Emulated time runs at a real RP2040's pace. Busy code advances it by its cycle count at
  // 125 MHz; rp2040js executes more slowly than that (about half speed), and the wall time it
  // takes beyond the cycles' own time is added to `lagNanos`. Idle waits (WFI/WFE) advance it
  // only as fast as the wall clock, less that lag, so that the firmware's timeouts match the
  // host's and durations it measures (a TLS handshake, a ConfigMap update) are what the chip
  // would see: its own cycles at 125 MHz plus real network waits.
  const t0 = process.hrtime.bigint();
  const wallNanos = () => Number(process.hrtime.bigint() - t0);
  let lagNanos = 0;
  const { core, clock } = mcu;
  let idleNanos = 0;
  // The deepest stack point seen, with the code running then and a snapshot of the stack's
  // return addresses, to tell what uses the stack (a painted stack says how much, not who).
  let deepest = { sp: stackTop, pc: 0, snapshot: null };
  const noteDepth = (sp) => {
    if (sp + 64 <= deepest.sp) {
      deepest = { sp, pc: core.PC, snapshot: mcu.sram.slice(sp - SRAM_START, stackTop - SRAM_START) };
    }
  };
  const backtrace = () => {
    if (!deepest.snapshot) return [];
    const v = new DataView(deepest.snapshot.buffer);
    const frames = [functionAt(deepest.pc)];
    for (let o = 0; o + 4 <= v.byteLength; o += 4) {
      const w = v.getUint32(o, true);
      // Return addresses are odd (Thumb) and point into the program.
      if ((w & 1) === 1 && w >= FLASH_START && w < FLASH_START + 0x200000) {
        const f = functionAt(w - 1);
        if (f !== '?' && f !== frames[frames.length - 1]) frames.push(`${deepest.sp + o - SRAM_START}: ${f}`);
      }
    }
    return frames;
  };
  // The longest stretch with interrupts masked (PRIMASK set: a critical section), in emulated
  // time, with where it began and ended; a real board's UART FIFO and USB wait meanwhile.
  let masked = false;
  let maskedSince = 0;
  let maskedFromPc = 0;
  let maskedMax = { nanos: 0, fromPc: 0, toPc: 0, at: 0 };
  const noteMask = () => {
    masked = core.PM;
    if (masked) {
      maskedSince = clock.nanos;
      maskedFromPc = core.PC;
    } else if (clock.nanos - maskedSince > maskedMax.nanos) {
      maskedMax = { nanos: clock.nanos - maskedSince, fromPc: maskedFromPc, toPc: core.PC, at: clock.nanos };
    }
  };
  const codeAt = (pc) => `0x${pc.toString(16)} ${functionAt(pc)}`;
  const slice = () => {
    const until = performance.now() + 20;
    while (performance.now() < until) {
      while (rxQueue.length > 0 && !uart.rxFIFO.full) {
        const b = rxQueue.shift();
        if (args.traceUart) process.stderr.write(`rx ${b.toString(16).padStart(2, '0')}\n`);
        uart.feedByte(b);
        rxBytes++;
      }
      if (core.waiting) {
        const behind = wallNanos() - lagNanos - clock.nanos;
        if (behind <= 0) break;
        const next = clock.nanosToNextAlarm;
        const step = next > 0 ? Math.min(next, behind) : behind;
        idleNanos += step;
        clock.tick(step);
        continue;
      }
      const wallStart = wallNanos();
      const emuStart = clock.nanos;
      for (let i = 0; i < 20_000 && !core.waiting; i++) {
        clock.tick(core.executeInstruction() * NANOS_PER_CYCLE);
        if (core.registers[13] < deepest.sp) noteDepth(core.registers[13]);
        if (core.PM !== masked) noteMask();
        if (i % 1024 === 0 && rxQueue.length > 0 && !uart.rxFIFO.full) break;
      }
      lagNanos += Math.max(0, wallNanos() - wallStart - (clock.nanos - emuStart));
      if (faults.length > 0) fail(faults.join('; '));
    }
    setTimeout(slice, core.waiting ? 1 : 0);
  };
  slice();

  const commands = readline.createInterface({ input: process.stdin });
  commands.on('line', (line) => {
    let cmd;
    try {
      cmd = JSON.parse(line);
    } catch {
      emit({ reply: 'error', why: 'not JSON' });
      return;
    }
    try {
      if (cmd.cmd === 'read') {
        const { addr, size } = symbol(cmd.symbol);
        const len = Math.min(cmd.len ?? size, size);
        const bytes = mcu.sram.subarray(addr - SRAM_START, addr - SRAM_START + len);
        emit({ reply: 'read', hex: Buffer.from(bytes).toString('hex'), nanos: clock.nanos });
      } else if (cmd.cmd === 'region') {
        const addr = mcu.readUint32(symbol('PICOLET_MEMORY_REGION_ADDR').addr);
        if (addr < SRAM_START || addr + 1024 > SRAM_START + mcu.sram.length) {
          emit({ reply: 'error', why: 'the memory region is not set up yet' });
        } else {
          const bytes = mcu.sram.subarray(addr - SRAM_START, addr - SRAM_START + 1024);
          emit({ reply: 'region', hex: Buffer.from(bytes).toString('hex'), nanos: clock.nanos });
        }
      } else if (cmd.cmd === 'stats') {
        emit({
          reply: 'stats',
          nanos: clock.nanos,
          busyCycles: core.cycles,
          idleNanos,
          lagNanos,
          wallNanos: wallNanos(),
          staticRamBytes: stackBottom - SRAM_START,
          stackBytes: stackTop - stackBottom,
          stackHighWaterBytes: stackHighWater(),
          uartTxBytes: txBytes,
          uartRxBytes: rxBytes,
          pc: codeAt(core.PC),
          maskedMaxNanos: maskedMax.nanos,
          maskedMaxFrom: codeAt(maskedMax.fromPc),
          maskedMaxTo: codeAt(maskedMax.toPc),
          maskedMaxEndedAtNanos: maskedMax.at,
        });
      } else if (cmd.cmd === 'edges') {
        emit({ reply: 'edges', edges: edges.get(cmd.pin) ?? [], nanos: clock.nanos });
      } else if (cmd.cmd === 'deepest') {
        emit({ reply: 'deepest', sp: deepest.sp, depthBytes: stackTop - deepest.sp, backtrace: backtrace() });
      } else if (cmd.cmd === 'exit') {
        process.exit(0);
      } else {
        emit({ reply: 'error', why: `unknown command ${cmd.cmd}` });
      }
    } catch (e) {
      emit({ reply: 'error', why: String(e.message ?? e) });
    }
  });
  commands.on('close', () => process.exit(0));
}

main();
