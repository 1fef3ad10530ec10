/*!
collab-dispatcher: the devices' entry point (port 3101). It reads the clear
header of a device's first frame, chooses a live collabd instance from the
Config DB's instance rows, and relays the connection's bytes both ways
without holding a key or seeing plaintext.
*/

pub mod config;
pub mod relay;
pub mod route;
