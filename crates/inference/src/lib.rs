pub mod prefix_index;
pub mod request;
