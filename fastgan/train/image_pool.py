"""The history of generated images a CycleGAN discriminator trains on (Shrivastava et al. 2017),
so that it also remembers what the generator made earlier."""
import torch

from fastgan._checks import check_int, check_tensor


class ImagePool:
    """Keeps up to `size` generated images. query(images) returns a batch of the same shape:
    while the pool fills, the new images themselves (and keeps them); once full, each image is,
    with probability 1/2, the new one, or else a stored one chosen at random, which the new image
    replaces. size=0 returns the images as they are. The pool's random draws come from its own
    generator (`seed`), and state_dict() holds them with the images, so that a resumed run draws
    exactly what an uninterrupted one would."""

    def __init__(self, size=50, seed=0):
        self.size = check_int("size", size, minimum=0)
        self.images = []
        self.generator = torch.Generator().manual_seed(check_int("seed", seed))

    def query(self, images):
        check_tensor("images", images)
        if self.size == 0:
            return images
        chosen = []
        for image in images.detach():
            image = image.unsqueeze(0)
            if len(self.images) < self.size:
                self.images.append(image.clone())
                chosen.append(image)
            elif torch.rand((), generator=self.generator) < 0.5:
                index = int(torch.randint(len(self.images), (), generator=self.generator))
                chosen.append(self.images[index].clone())
                self.images[index] = image.clone()
            else:
                chosen.append(image)
        return torch.cat(chosen)

    def __len__(self):
        return len(self.images)

    def state_dict(self):
        return {"size": self.size, "images": [image.cpu() for image in self.images],
                "generator": self.generator.get_state()}

    def load_state_dict(self, state, device=None):
        """Restores a state_dict(); the images go to `device` (default: where they were)."""
        if state["size"] != self.size:
            raise ValueError(f"the saved pool holds up to {state['size']} images, this one "
                             f"{self.size}")
        self.images = [image.to(device) if device is not None else image.clone()
                       for image in state["images"]]
        self.generator.set_state(state["generator"])
