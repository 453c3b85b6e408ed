//! The gRPC codec: prost's, except that a message is encoded into room reserved for its
//! exact encoded length. prost's own encoder lets the buffer grow as it writes, doubling it,
//! so a message of a 25 MiB value or a 100 MB bulk write touched up to twice its size in
//! buffers (the old one and its doubled copy) on its way out.

use std::marker::PhantomData;

use prost::Message;
use tonic::codec::{BufferSettings, Codec, EncodeBuf, Encoder};
use tonic::Status;
use tonic_prost::ProstDecoder;

/// The codec of every driftkv call (generated code names it through `codec_path`).
#[derive(Debug, Clone)]
pub struct ExactCodec<T, U>(PhantomData<(T, U)>);

impl<T, U> Default for ExactCodec<T, U> {
    fn default() -> Self {
        ExactCodec(PhantomData)
    }
}

impl<T, U> Codec for ExactCodec<T, U>
where
    T: Message + Send + 'static,
    U: Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ExactEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ExactEncoder(PhantomData)
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstDecoder::default()
    }
}

/// Encodes a message after reserving its encoded length.
#[derive(Debug, Clone)]
pub struct ExactEncoder<T>(PhantomData<T>);

impl<T: Message> Encoder for ExactEncoder<T> {
    type Item = T;
    type Error = Status;

    fn encode(&mut self, item: T, buf: &mut EncodeBuf<'_>) -> Result<(), Status> {
        buf.reserve(item.encoded_len());
        item.encode(buf)
            .map_err(|e| Status::internal(format!("encoding a message: {e}")))
    }

    fn buffer_settings(&self) -> BufferSettings {
        BufferSettings::default()
    }
}
