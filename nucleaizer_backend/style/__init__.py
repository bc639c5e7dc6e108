"""Style adaptation: cluster target images into styles, synthesise masks, learn styles with pix2pix, fine-tune."""
