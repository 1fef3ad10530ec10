//! Typed send and receive on the secure channel and its halves: a
//! message is encoded into one `Data` frame's payload and decoded from
//! one.

use std::io::{Read, Write};

use super::{DeviceMessage, ServiceMessage};
use crate::wire::channel::{SecureChannel, SecureReader, SecureWriter};
use crate::wire::WireError;

impl<S: Read + Write> SecureChannel<S> {
    /// Sends a device message (device side).
    pub fn send_device(&mut self, m: &DeviceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// Sends a service message (service side).
    pub fn send_service(&mut self, m: &ServiceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// Receives a service message (device side).
    pub fn recv_service(&mut self) -> Result<ServiceMessage, WireError> {
        self.recv_with(ServiceMessage::decode)
    }

    /// Receives a device message (service side).
    pub fn recv_device(&mut self) -> Result<DeviceMessage, WireError> {
        self.recv_with(DeviceMessage::decode)
    }
}

impl<R: Read> SecureReader<R> {
    /// Receives a device message (service side).
    pub fn recv_device(&mut self) -> Result<DeviceMessage, WireError> {
        self.recv_with(DeviceMessage::decode)
    }

    /// Receives a service message (device side).
    pub fn recv_service(&mut self) -> Result<ServiceMessage, WireError> {
        self.recv_with(ServiceMessage::decode)
    }
}

impl<W: Write> SecureWriter<W> {
    /// Sends a service message (service side).
    pub fn send_service(&mut self, m: &ServiceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }

    /// Sends a device message (device side).
    pub fn send_device(&mut self, m: &DeviceMessage) -> Result<(), WireError> {
        self.send(&m.encode())
    }
}
