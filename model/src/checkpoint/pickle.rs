//! A restricted unpickler for PyTorch state dicts.
//!
//! It understands only what `torch.save` emits for (nested) dicts of tensors:
//! containers, scalars, strings, storage persistent ids and the globals
//! `collections.OrderedDict`, `torch._utils._rebuild_tensor_v2`,
//! `torch._utils._rebuild_parameter` and `torch.*Storage`. Any other global
//! (e.g. `os.system`) or opcode is refused before anything is built, so a
//! malicious file can at worst produce an error. Nothing is ever "called":
//! the allowed callables are interpreted by hand.

use std::collections::HashMap;

use candle_core::DType;

use crate::{ModelError, Result};

/// The allowed globals.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Global {
    /// `collections.OrderedDict`.
    OrderedDict,
    /// `torch._utils._rebuild_tensor_v2`.
    RebuildTensorV2,
    /// `torch._utils._rebuild_parameter`.
    RebuildParameter,
    /// `torch.<T>Storage`: the element type of a storage.
    Storage(DType),
}

impl Global {
    fn resolve(module: &str, name: &str) -> Result<Self> {
        let storage = |dt| Ok(Self::Storage(dt));
        match (module, name) {
            ("collections", "OrderedDict") => Ok(Self::OrderedDict),
            ("torch._utils", "_rebuild_tensor_v2") => Ok(Self::RebuildTensorV2),
            ("torch._utils", "_rebuild_parameter") => Ok(Self::RebuildParameter),
            ("torch", "FloatStorage") => storage(DType::F32),
            ("torch", "DoubleStorage") => storage(DType::F64),
            ("torch", "HalfStorage") => storage(DType::F16),
            ("torch", "BFloat16Storage") => storage(DType::BF16),
            ("torch", "LongStorage") => storage(DType::I64),
            ("torch", "IntStorage") => storage(DType::I32),
            ("torch", "ShortStorage") => storage(DType::I16),
            ("torch", "ByteStorage" | "BoolStorage") => storage(DType::U8),
            _ => Err(ModelError::Pickle(format!(
                "refusing global {module}.{name}: only tensors, dicts, lists, \
                 tuples and scalars are allowed in a checkpoint"
            ))),
        }
    }
}

/// A storage referenced by a persistent id: `data/<key>` in the archive.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct StorageRef {
    /// Element type.
    pub dtype: DType,
    /// Archive entry name under `data/`.
    pub key: String,
    /// Number of elements.
    pub numel: usize,
}

/// A strided view of a storage (`_rebuild_tensor_v2` arguments).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct TensorRef {
    /// The storage.
    pub storage: StorageRef,
    /// Element offset into the storage.
    pub offset: usize,
    /// Shape.
    pub size: Vec<usize>,
    /// Strides in elements.
    pub stride: Vec<usize>,
}

/// An unpickled value.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Value {
    None,
    Bool(bool),
    Int(i64),
    Float(f64),
    Str(String),
    Tuple(Vec<Value>),
    List(Vec<Value>),
    /// `dict` and `OrderedDict`, insertion order kept.
    Dict(Vec<(Value, Value)>),
    Global(Global),
    Storage(StorageRef),
    Tensor(TensorRef),
    /// Stack marker (never returned).
    Mark,
}

fn err<T>(msg: impl Into<String>) -> Result<T> {
    Err(ModelError::Pickle(msg.into()))
}

/// Byte reader over the pickle.
struct Reader<'a> {
    data: &'a [u8],
    pos: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8]> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.data.len());
        let Some(end) = end else {
            return err("truncated pickle");
        };
        let s = &self.data[self.pos..end];
        self.pos = end;
        Ok(s)
    }

    fn u8(&mut self) -> Result<u8> {
        Ok(self.take(1)?[0])
    }

    fn u16(&mut self) -> Result<u16> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }

    fn u32(&mut self) -> Result<u32> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }

    fn line(&mut self) -> Result<String> {
        let rest = &self.data[self.pos..];
        let Some(n) = rest.iter().position(|&b| b == b'\n') else {
            return err("unterminated GLOBAL line");
        };
        let s = std::str::from_utf8(&rest[..n])
            .map_err(|_| ModelError::Pickle("GLOBAL name is not UTF-8".into()))?
            .to_string();
        self.pos += n + 1;
        Ok(s)
    }

    fn utf8(&mut self, n: usize) -> Result<String> {
        let b = self.take(n)?;
        match std::str::from_utf8(b) {
            Ok(s) => Ok(s.to_string()),
            Err(_) => err("string is not UTF-8"),
        }
    }
}

/// The unpickler's state.
#[derive(Default)]
struct Machine {
    stack: Vec<Value>,
    memo: HashMap<u32, Value>,
}

impl Machine {
    fn pop(&mut self) -> Result<Value> {
        match self.stack.pop() {
            Some(Value::Mark) | None => err("stack underflow"),
            Some(v) => Ok(v),
        }
    }

    fn top(&mut self) -> Result<&mut Value> {
        match self.stack.last_mut() {
            Some(Value::Mark) | None => err("stack underflow"),
            Some(v) => Ok(v),
        }
    }

    fn pop_mark(&mut self) -> Result<Vec<Value>> {
        let Some(m) = self.stack.iter().rposition(|v| *v == Value::Mark) else {
            return err("MARK missing");
        };
        let items = self.stack.split_off(m + 1);
        self.stack.pop();
        Ok(items)
    }

    fn memo_put(&mut self, id: u32) -> Result<()> {
        let v = self.top()?.clone();
        self.memo.insert(id, v);
        Ok(())
    }

    fn memo_get(&mut self, id: u32) -> Result<()> {
        match self.memo.get(&id) {
            // Values are copies, not shared objects: a container mutated
            // after BINPUT would come back stale. State dicts never do this.
            Some(Value::Dict(_) | Value::List(_)) => err(format!(
                "memo {id}: shared dict/list references are not supported"
            )),
            Some(v) => {
                let v = v.clone();
                self.stack.push(v);
                Ok(())
            }
            None => err(format!("memo key {id} not found")),
        }
    }

    fn set_items(&mut self, items: Vec<Value>) -> Result<()> {
        if !items.len().is_multiple_of(2) {
            return err("SETITEMS with an odd number of items");
        }
        let Value::Dict(d) = self.top()? else {
            return err("SETITEM(S) on a non-dict");
        };
        let mut it = items.into_iter();
        while let (Some(k), Some(v)) = (it.next(), it.next()) {
            // Replace an existing key (Python dict semantics).
            match d.iter_mut().find(|(kk, _)| *kk == k) {
                Some(slot) => slot.1 = v,
                None => d.push((k, v)),
            }
        }
        Ok(())
    }

    fn append(&mut self, items: Vec<Value>) -> Result<()> {
        match self.top()? {
            Value::List(l) => {
                l.extend(items);
                Ok(())
            }
            _ => err("APPEND(S) on a non-list"),
        }
    }

    fn reduce(&mut self) -> Result<()> {
        let args = self.pop()?;
        let callable = self.pop()?;
        let Value::Tuple(args) = args else {
            return err("REDUCE arguments are not a tuple");
        };
        let v = match callable {
            Value::Global(Global::OrderedDict) => match args.as_slice() {
                [] => Value::Dict(Vec::new()),
                _ => return err("OrderedDict(...) with arguments is not supported"),
            },
            Value::Global(Global::RebuildTensorV2) => rebuild_tensor(args)?,
            Value::Global(Global::RebuildParameter) => match args.into_iter().next() {
                Some(t @ Value::Tensor(_)) => t,
                _ => return err("_rebuild_parameter without a tensor"),
            },
            other => return err(format!("cannot call {other:?}")),
        };
        self.stack.push(v);
        Ok(())
    }

    fn build(&mut self) -> Result<()> {
        let state = self.pop()?;
        match (self.top()?, state) {
            // OrderedDict instance state, e.g. a state dict's `_metadata`:
            // layer versions, not needed.
            (Value::Dict(_), Value::Dict(_) | Value::None) => Ok(()),
            (target, _) => err(format!("BUILD on {target:?} is not supported")),
        }
    }

    fn persistent_load(&mut self) -> Result<()> {
        let pid = self.pop()?;
        let Value::Tuple(t) = pid else {
            return err("persistent id is not a tuple");
        };
        match t.as_slice() {
            [
                Value::Str(kind),
                Value::Global(Global::Storage(dtype)),
                Value::Str(key),
                Value::Str(_location),
                Value::Int(numel),
            ] if kind == "storage" && *numel >= 0 => {
                self.stack.push(Value::Storage(StorageRef {
                    dtype: *dtype,
                    key: key.clone(),
                    numel: *numel as usize,
                }));
                Ok(())
            }
            _ => err(format!("unsupported persistent id {t:?}")),
        }
    }
}

fn usizes(v: &Value, what: &str) -> Result<Vec<usize>> {
    let Value::Tuple(items) = v else {
        return err(format!("{what} is not a tuple"));
    };
    items
        .iter()
        .map(|i| match i {
            Value::Int(n) if *n >= 0 => Ok(*n as usize),
            _ => err(format!("{what} holds a non-index value")),
        })
        .collect()
}

/// `_rebuild_tensor_v2(storage, offset, size, stride, requires_grad, hooks[, metadata])`.
fn rebuild_tensor(args: Vec<Value>) -> Result<Value> {
    if !(6..=7).contains(&args.len()) {
        return err(format!("_rebuild_tensor_v2 with {} arguments", args.len()));
    }
    let Value::Storage(storage) = &args[0] else {
        return err("_rebuild_tensor_v2 without a storage");
    };
    let Value::Int(offset) = args[1] else {
        return err("_rebuild_tensor_v2 offset is not an int");
    };
    let size = usizes(&args[2], "size")?;
    let stride = usizes(&args[3], "stride")?;
    if size.len() != stride.len() || offset < 0 {
        return err("_rebuild_tensor_v2 size/stride mismatch");
    }
    Ok(Value::Tensor(TensorRef {
        storage: storage.clone(),
        offset: offset as usize,
        size,
        stride,
    }))
}

/// Unpickles `data` under the restrictions described in the module docs.
pub(crate) fn unpickle(data: &[u8]) -> Result<Value> {
    let mut r = Reader { data, pos: 0 };
    let mut m = Machine::default();
    loop {
        let at = r.pos;
        let op = r.u8()?;
        match op {
            0x80 => {
                let proto = r.u8()?;
                if proto > 5 {
                    return err(format!("pickle protocol {proto}"));
                }
            }
            0x95 => {
                r.take(8)?; // FRAME: a length hint only
            }
            b'.' => return m.pop(),
            b'c' => {
                let module = r.line()?;
                let name = r.line()?;
                m.stack
                    .push(Value::Global(Global::resolve(&module, &name)?));
            }
            0x93 => {
                let name = m.pop()?;
                let module = m.pop()?;
                let (Value::Str(module), Value::Str(name)) = (module, name) else {
                    return err("STACK_GLOBAL needs two strings");
                };
                m.stack
                    .push(Value::Global(Global::resolve(&module, &name)?));
            }
            b'q' => {
                let id = r.u8()?;
                m.memo_put(u32::from(id))?;
            }
            b'r' => {
                let id = r.u32()?;
                m.memo_put(id)?;
            }
            0x94 => {
                let id = m.memo.len() as u32;
                m.memo_put(id)?;
            }
            b'h' => {
                let id = r.u8()?;
                m.memo_get(u32::from(id))?;
            }
            b'j' => {
                let id = r.u32()?;
                m.memo_get(id)?;
            }
            b'(' => m.stack.push(Value::Mark),
            b'}' => m.stack.push(Value::Dict(Vec::new())),
            b']' => m.stack.push(Value::List(Vec::new())),
            b')' => m.stack.push(Value::Tuple(Vec::new())),
            b'N' => m.stack.push(Value::None),
            0x88 => m.stack.push(Value::Bool(true)),
            0x89 => m.stack.push(Value::Bool(false)),
            b'K' => {
                let v = r.u8()?;
                m.stack.push(Value::Int(i64::from(v)));
            }
            b'M' => {
                let v = r.u16()?;
                m.stack.push(Value::Int(i64::from(v)));
            }
            b'J' => {
                let v = r.u32()? as i32;
                m.stack.push(Value::Int(i64::from(v)));
            }
            0x8a => {
                let n = usize::from(r.u8()?);
                let bytes = r.take(n)?;
                if n > 8 {
                    return err("LONG1 wider than 64 bits");
                }
                // Little-endian two's complement, sign-extended.
                let mut buf = if bytes.last().is_some_and(|b| b & 0x80 != 0) {
                    [0xff; 8]
                } else {
                    [0; 8]
                };
                buf[..n].copy_from_slice(bytes);
                m.stack.push(Value::Int(i64::from_le_bytes(buf)));
            }
            b'G' => {
                let b = r.take(8)?;
                m.stack
                    .push(Value::Float(f64::from_be_bytes(b.try_into().expect("8"))));
            }
            b'X' => {
                let n = r.u32()? as usize;
                let s = r.utf8(n)?;
                m.stack.push(Value::Str(s));
            }
            0x8c => {
                let n = usize::from(r.u8()?);
                let s = r.utf8(n)?;
                m.stack.push(Value::Str(s));
            }
            b't' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Tuple(items));
            }
            0x85..=0x87 => {
                let n = usize::from(op - 0x84);
                if m.stack.len() < n {
                    return err("stack underflow");
                }
                let items = m.stack.split_off(m.stack.len() - n);
                if items.contains(&Value::Mark) {
                    return err("MARK inside TUPLEn");
                }
                m.stack.push(Value::Tuple(items));
            }
            b'l' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::List(items));
            }
            b'd' => {
                let items = m.pop_mark()?;
                m.stack.push(Value::Dict(Vec::new()));
                m.set_items(items)?;
            }
            b's' => {
                let v = m.pop()?;
                let k = m.pop()?;
                m.set_items(vec![k, v])?;
            }
            b'u' => {
                let items = m.pop_mark()?;
                m.set_items(items)?;
            }
            b'a' => {
                let v = m.pop()?;
                m.append(vec![v])?;
            }
            b'e' => {
                let items = m.pop_mark()?;
                m.append(items)?;
            }
            b'R' => m.reduce()?,
            b'b' => m.build()?,
            b'Q' => m.persistent_load()?,
            _ => {
                return err(format!(
                    "unsupported pickle opcode 0x{op:02x} at byte {at} \
                     (only torch state-dict pickles are accepted)"
                ));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_os_system() {
        // pickle.dumps of a __reduce__ returning (os.system, ("echo pwned",)), protocol 2.
        let mut p = vec![0x80, 2];
        p.extend_from_slice(b"cos\nsystem\nq\x00X\x0a\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.");
        let e = unpickle(&p).unwrap_err();
        let msg = e.to_string();
        assert!(matches!(e, ModelError::Pickle(_)), "{msg}");
        assert!(msg.contains("refusing global os.system"), "{msg}");
        // Same through STACK_GLOBAL (protocol 4).
        let mut p = vec![0x80, 4, 0x8c, 8];
        p.extend_from_slice(b"builtins\x8c\x04eval\x93.");
        let msg = unpickle(&p).unwrap_err().to_string();
        assert!(msg.contains("refusing global builtins.eval"), "{msg}");
        // CPython's own bytes on Linux (os.system pickles as posix.system).
        let p = b"\x80\x02cposix\nsystem\nq\x00X\n\x00\x00\x00echo pwnedq\x01\x85q\x02Rq\x03.";
        let msg = unpickle(p).unwrap_err().to_string();
        assert!(msg.contains("refusing global posix.system"), "{msg}");
    }

    #[test]
    fn refuses_unknown_opcodes_and_truncation() {
        // INST ('i') builds arbitrary objects: refused as an opcode.
        let msg = unpickle(b"\x80\x02ios\nsystem\n.").unwrap_err().to_string();
        assert!(msg.contains("unsupported pickle opcode 0x69"), "{msg}");
        assert!(unpickle(b"\x80\x02X\xff\x00\x00\x00ab").is_err());
        assert!(unpickle(b"\x80\x02").is_err());
    }

    #[test]
    fn reads_containers_and_scalars() {
        // pickle.dumps({'a': [1, -2, 300, 70000], 'b': (True, None, 0.5),
        // 'c': 2**40}, protocol=2) from CPython 3.
        let p = b"\x80\x02}q\x00(X\x01\x00\x00\x00aq\x01]q\x02(K\x01J\xfe\xff\xff\xffM,\x01Jp\x11\x01\x00eX\x01\x00\x00\x00bq\x03\x88NG?\xe0\x00\x00\x00\x00\x00\x00\x87q\x04X\x01\x00\x00\x00cq\x05\x8a\x06\x00\x00\x00\x00\x00\x01u.";
        let s = |x: &str| Value::Str(x.into());
        let want = Value::Dict(vec![
            (
                s("a"),
                Value::List(vec![
                    Value::Int(1),
                    Value::Int(-2),
                    Value::Int(300),
                    Value::Int(70_000),
                ]),
            ),
            (
                s("b"),
                Value::Tuple(vec![Value::Bool(true), Value::None, Value::Float(0.5)]),
            ),
            (s("c"), Value::Int(1 << 40)),
        ]);
        assert_eq!(unpickle(p).unwrap(), want);
        // A memoised container fetched again would be a stale copy: refused.
        let q = b"\x80\x02]q\x00(K\x01eh\x00.";
        assert!(unpickle(q).is_err());
    }
}
